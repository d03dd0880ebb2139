package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/tunsocks/tunsocks/config"
	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/router"
	"github.com/tunsocks/tunsocks/wg"
)

func TestWGUsageErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"wg", "--listen", "51820"}, "want [ADDRESS]:PORT"},
		{[]string{"wg", "--listen", "host.lan:51820"}, "must be an IP address"},
		{[]string{"wg", "--peer", "../evil"}, "peer name"},
		{[]string{"wg", "--endpoint", "0.0.0.0:51820"}, "cannot reach this host"},
		{[]string{"wg", "--endpoint", "pc.lan"}, "want HOST:PORT"},
		{[]string{"wg", "--mtu", "1000"}, "want 1280..65535"},
		{[]string{"wg", "--range", "10.7.0.0/31"}, "/30 or wider"},
		{[]string{"wg", "--range", "nope"}, "want a prefix"},
		{[]string{"wg", "pixel"}, "--peer NAME"},
		{[]string{"wg"}, "nothing says where flows go"},
		{[]string{"wg", "remove-peer", "--state", filepath.Join(dir, "missing.json"), "x"}, "no such file"},
		{[]string{"wg", "remove-peer"}, "name the peers"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr testenv.Buffer
			args := append([]string{"tunsocks"}, tc.args...)
			if tc.args[len(tc.args)-1] != "remove-peer" && !strings.Contains(strings.Join(tc.args, " "), "remove-peer") && len(tc.args) > 1 {
				args = append(args, "--proxy", "direct", "--state", filepath.Join(dir, "wg.json"))
			}
			code := run(context.Background(), args, &stdout, &stderr)
			if code != exitUsage || !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("exit %d, stderr:\n%s\nwant exit %d and %q", code, stderr.String(), exitUsage, tc.want)
			}
		})
	}
}

func TestWGRemovePeer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "wg.json")
	st, _, _ := wg.OpenState(path)
	st.AddPeer("pixel")
	st.AddPeer("ipad")
	if err := st.Save(); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr testenv.Buffer
	if code := run(context.Background(), []string{"tunsocks", "wg", "remove-peer", "--state", path, "nokia"}, &stdout, &stderr); code != exitUsage ||
		!strings.Contains(stderr.String(), "pixel, ipad") {
		t.Fatalf("removing an unknown peer: exit %d\n%s", code, stderr.String())
	}
	if code := run(context.Background(), []string{"tunsocks", "wg", "remove-peer", "--state", path, "IPAD"}, &stdout, &stderr); code != exitOK {
		t.Fatalf("exit %d\n%s", code, stderr.String())
	}
	back, err := wg.LoadState(path)
	if err != nil || len(back.Peers) != 1 || back.Peers[0].Name != "pixel" || back.Server != st.Server {
		t.Fatalf("after remove-peer: %+v, %v", back, err)
	}
}

func TestWGConfigSection(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tunsocks.yaml")
	os.WriteFile(path, []byte("proxy: direct\nwireguard:\n  listen: \"192.168.1.5:51821\"\n  peers: [pixel, ipad]\n  range: [10.9.0.0/24, fd09::/64]\n  block-quic: false\n  mtu: 1380\n"), 0o600)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	w := cfg.WireGuard
	if w == nil || w.Listen != netip.MustParseAddrPort("192.168.1.5:51821") || len(w.Peers) != 2 || w.BlockQUIC || !w.BlockDoT || w.MTU != 1380 ||
		w.Range4 != netip.MustParsePrefix("10.9.0.0/24") || w.Range6 != netip.MustParsePrefix("fd09::/64") || !w.QR {
		t.Fatalf("wireguard section: %+v", w)
	}
	for _, c := range []struct{ yaml, want string }{
		{"wireguard:\n  peers: [\"a b\"]\n", ":3: wireguard.peers: peer name"},
		{"wireguard:\n  listen: 51820\n", ":3: wireguard.listen \"51820\": want [ADDRESS]:PORT"},
		{"wireguard:\n  mtu: 1000\n", ":3: wireguard.mtu 1000: want 1280 to 65535"},
		{"wireguard:\n  peer: x\n", ":3: unknown key \"peer\" in wireguard; did you mean \"peers\"?"},
	} {
		os.WriteFile(path, []byte("proxy: direct\n"+c.yaml), 0o600)
		if _, err := config.Load(path); err == nil || !strings.Contains(err.Error(), path+c.want) {
			t.Errorf("%q: %v, want %q", c.yaml, err, c.want)
		}
	}
	if cfg, err := config.Parse([]byte("proxy: direct\nwireguard:\n"), ""); err != nil || cfg.WireGuard == nil || cfg.WireGuard.Listen.Port() != 51820 {
		t.Fatalf("an empty wireguard section: %+v, %v", cfg, err)
	}
}

// connectProxy is an HTTP CONNECT proxy that records each request's
// target and then echoes what the client sends.
type connectProxy struct {
	mu      sync.Mutex
	targets []string
}

func (p *connectProxy) serve(c net.Conn) {
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return
		}
		if l == "\r\n" {
			break
		}
	}
	f := strings.Fields(line)
	if len(f) < 2 || f[0] != "CONNECT" {
		io.WriteString(c, "HTTP/1.1 405 Method Not Allowed\r\n\r\n")
		return
	}
	p.mu.Lock()
	p.targets = append(p.targets, f[1])
	p.mu.Unlock()
	io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
	io.Copy(c, br)
}

func (p *connectProxy) seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.targets...)
}

// TestWGPipelineInProcess runs 'tunsocks wg' in the process, unprivileged:
// a wireguard-go phone configured from the printed text resolves a name
// through the tunnel, connects by it, and the HTTP upstream's CONNECT
// carries the name; QUIC and DNS over TLS are rejected by the built-in
// rules; flows are tagged with the peer.
func TestWGPipelineInProcess(t *testing.T) {
	proxy := &connectProxy{}
	upstream := testenv.TCPServer(t, "tcp", "127.0.0.1:0", proxy.serve)
	dir := t.TempDir()
	cfg := config.Default()
	cfg.Proxy = "http://" + upstream
	cfg.SummaryInterval = 0
	cfg.WireGuard = config.DefaultWireGuard()
	cfg.WireGuard.Listen = netip.MustParseAddrPort("127.0.0.1:0")
	cfg.WireGuard.State = filepath.Join(dir, "wg.json")
	cfg.WireGuard.Peers = []string{"pixel"}
	cfg.WireGuard.QR = false
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	var out testenv.Buffer
	var logs testenv.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	flows := make(chan router.FlowRecord, 64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runPipeline(ctx, cfg, log, pipelineHooks{noTUN: true, stdout: &out, onFlow: func(r router.FlowRecord) {
			select {
			case flows <- r:
			default:
			}
		}})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("runPipeline: %v", err)
		}
		if t.Failed() {
			t.Logf("log:\n%s", logs.String())
		}
	}()
	c := printedConfigs(t, &out, &logs, "pixel")["pixel"]
	if !strings.HasPrefix(c.Endpoint, "127.0.0.1:") || c.DNS[0] != netip.MustParseAddr("10.7.0.1") {
		t.Fatalf("config: %+v", c)
	}
	phone := newTestPhone(t, c)

	// DNS through the tunnel to the server's address gives a fake IP; a
	// connection to it reaches the upstream by name.
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	ips, err := phone.LookupContextHost(rctx, "name.test")
	if err != nil || len(ips) == 0 {
		t.Fatalf("lookup through the tunnel: %v %v", ips, err)
	}
	fake := netip.MustParseAddr(ips[0])
	if !netip.MustParsePrefix("198.18.0.0/15").Contains(fake) && !netip.MustParsePrefix("fc00::/18").Contains(fake) {
		t.Fatalf("name.test resolved to %s, not a fake IP", fake)
	}
	conn, err := phone.DialContextTCPAddrPort(rctx, netip.AddrPortFrom(fake, 80))
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(conn, "ping")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo through the upstream: %q %v", buf, err)
	}
	conn.Close()
	if got := proxy.seen(); len(got) != 1 || got[0] != "name.test:80" {
		t.Fatalf("the upstream saw CONNECT %v, want name.test:80", got)
	}
	// DNS over TLS gets a RST.
	_, err = phone.DialContextTCPAddrPort(rctx, netip.MustParseAddrPort("192.0.2.1:853"))
	if !errors.Is(err, syscall.ECONNREFUSED) && (err == nil || !strings.Contains(err.Error(), "refused")) {
		t.Fatalf("TCP to 853: %v, want connection refused", err)
	}
	// QUIC: a datagram to 443 is rejected by the built-in rule.
	uc, err := phone.DialUDPAddrPort(netip.AddrPort{}, netip.MustParseAddrPort("192.0.2.1:443"))
	if err != nil {
		t.Fatal(err)
	}
	uc.Write([]byte("quic"))
	uc.Close()
	// Other UDP toward an HTTP upstream, which has no UDP: rejected.
	uc, err = phone.DialUDPAddrPort(netip.AddrPort{}, netip.MustParseAddrPort("192.0.2.1:5000"))
	if err != nil {
		t.Fatal(err)
	}
	uc.Write([]byte("game"))
	uc.Close()

	want := map[string]bool{"853": false, "443": false, "80": false, "5000": false}
	for deadline := time.After(10 * time.Second); !want["853"] || !want["443"] || !want["80"] || !want["5000"]; {
		select {
		case r := <-flows:
			if r.InType != "wireguard" || r.InUser != "pixel" {
				t.Fatalf("flow not tagged with the peer: %+v", r)
			}
			switch {
			case r.Dst.Port() == 853 && r.Outbound == "REJECT" && strings.Contains(r.Rule, "block-dot"):
				want["853"] = true
			case r.Dst.Port() == 443 && r.Network == "udp":
				// The UDP flow's record: rejected, by the QUIC rule.
				if r.Outbound != "REJECT" || !strings.Contains(r.Rule, "block-quic") {
					t.Fatalf("QUIC flow: %+v", r)
				}
				want["443"] = true
			case r.Dst.Port() == 80 && r.Host == "name.test":
				want["80"] = true
			case r.Dst.Port() == 5000:
				if r.Outbound != "REJECT" || !strings.Contains(r.Rule, "carries no UDP") {
					t.Fatalf("UDP toward the HTTP upstream: %+v", r)
				}
				want["5000"] = true
			}
		case <-deadline:
			t.Fatalf("flow records seen: %v\n%s", want, logs.String())
		}
	}
}

func newTestPhone(t *testing.T, c wg.ClientConfig) *netstack.Net {
	t.Helper()
	var addrs []netip.Addr
	for _, p := range c.Addresses {
		addrs = append(addrs, p.Addr())
	}
	tdev, tnet, err := netstack.CreateNetTUN(addrs, c.DNS, c.MTU)
	if err != nil {
		t.Fatal(err)
	}
	listen := func(ctx context.Context, network, address string) (net.PacketConn, error) {
		var lc net.ListenConfig
		return lc.ListenPacket(ctx, network, address)
	}
	dev := device.NewDevice(tdev, wg.NewBind(context.Background(), listen, netip.MustParseAddr("127.0.0.1")), device.NewLogger(device.LogLevelSilent, ""))
	uapi := fmt.Sprintf("private_key=%s\npublic_key=%s\nendpoint=%s\nallowed_ip=0.0.0.0/0\nallowed_ip=::/0\n", c.PrivateKey.Hex(), c.ServerKey.Hex(), c.Endpoint)
	if err := dev.IpcSet(uapi); err != nil {
		t.Fatal(err)
	}
	if err := dev.Up(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dev.Close)
	return tnet
}

// printedConfigs waits for the configs of the named peers in a run's
// output and returns them parsed, by peer.
func printedConfigs(t *testing.T, out, logs *testenv.Buffer, names ...string) map[string]wg.ClientConfig {
	t.Helper()
	got := map[string]wg.ClientConfig{}
	for deadline := time.Now().Add(10 * time.Second); len(got) < len(names); {
		got = map[string]wg.ClientConfig{}
		blocks := strings.Split(out.String(), "\n# WireGuard peer ")
		for _, b := range blocks[1:] {
			name, _, _ := strings.Cut(strings.TrimPrefix(b, `"`), `"`)
			i := strings.Index(b, "[Interface]")
			j := strings.Index(b, "PersistentKeepalive")
			if i < 0 || j < 0 || !strings.Contains(b[j:], "\n") {
				continue
			}
			k := j + strings.Index(b[j:], "\n") + 1
			c, err := wg.ParseClientConfig(b[i:k])
			if err != nil {
				t.Fatal(err)
			}
			got[name] = c
		}
		if time.Now().After(deadline) {
			t.Fatalf("configs printed for %v of %v:\n%s\n%s", len(got), names, out.String(), logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return got
}

// TestWGRulesByPeer: a rule naming a peer (IN-USER) applies to that
// peer's flows only.
func TestWGRulesByPeer(t *testing.T) {
	proxy := &connectProxy{}
	upstream := testenv.TCPServer(t, "tcp", "127.0.0.1:0", proxy.serve)
	dir := t.TempDir()
	cfg, err := config.Parse([]byte(fmt.Sprintf(`proxies:
  - name: up
    url: http://%s
rules:
  - IN-USER,ipad,REJECT
  - MATCH,up
summary-interval: 0s
wireguard:
  listen: "127.0.0.1:0"
  state: %s
  peers: [pixel, ipad]
  qr: false
`, upstream, filepath.Join(dir, "wg.json"))), "")
	if err != nil {
		t.Fatal(err)
	}
	var out, logs testenv.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runPipeline(ctx, cfg, log, pipelineHooks{noTUN: true, stdout: &out}) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("runPipeline: %v", err)
		}
	}()
	cs := printedConfigs(t, &out, &logs, "pixel", "ipad")
	pixel, ipad := newTestPhone(t, cs["pixel"]), newTestPhone(t, cs["ipad"])
	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	defer dcancel()
	c, err := pixel.DialContextTCPAddrPort(dctx, netip.MustParseAddrPort("192.0.2.7:80"))
	if err != nil {
		t.Fatalf("pixel: %v\n%s", err, logs.String())
	}
	c.Close()
	if _, err := ipad.DialContextTCPAddrPort(dctx, netip.MustParseAddrPort("192.0.2.7:80")); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("ipad, rejected by IN-USER: %v", err)
	}
	if got := proxy.seen(); len(got) != 1 || got[0] != "192.0.2.7:80" {
		t.Fatalf("upstream saw %v: only pixel's connection should get there", got)
	}
}
