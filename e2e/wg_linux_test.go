package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/tunsocks/tunsocks/internal/direct"
	"github.com/tunsocks/tunsocks/internal/lab"
	"github.com/tunsocks/tunsocks/internal/netns"
	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/wg"
)

// The WireGuard lab: two "phones" (the lab's app host and one more
// namespace) run Debian's wireguard-go and wg, configured from the QR
// codes tunsocks wrote; tunsocks runs unprivileged on the lab's proxy
// host as the WireGuard server; the remote host runs the web server for
// name.test and mitmdump, the debugging proxy that is tunsocks' upstream.
//
//	phone1 (app) ──┐
//	               ├── host (tunsocks wg, uid 65534) ── remote (mitmdump :8080, name.test :80/:443)
//	phone2 ────────┘
const (
	nobody    = 65534
	wgPort    = 51820
	mitmPort  = 8080
	phoneName = "name.test"
)

var (
	phone2Up   = netip.MustParsePrefix("10.203.0.2/24")
	hostToPh2  = netip.MustParsePrefix("10.203.0.1/24")
	phone2Up6  = netip.MustParsePrefix("fd03::2/64")
	hostToPh26 = netip.MustParsePrefix("fd03::1/64")
)

type wgLab struct {
	*env
	phone2 string
	dir    string // owned by nobody: state, QR codes
	tsk    *proc
	mitm   *proc
	phones []*proc     // wireguard-go
	seen   chan string // Host headers the web server saw
}

func TestWireGuardPhonesThroughMitmproxy(t *testing.T) {
	curl := testenv.NeedTool(t, "curl", "curl")
	wgGo := testenv.NeedTool(t, "wireguard-go", "wireguard-go")
	wgTool := testenv.NeedTool(t, "wg", "wireguard-tools")
	zbarimg := testenv.NeedTool(t, "zbarimg", "zbar-tools")
	mitmdump := testenv.NeedTool(t, "mitmdump", "mitmproxy")

	x := newWGLab(t)
	x.startMitmdump(mitmdump)
	state := filepath.Join(x.dir, "state", "wg.json")
	qrDir := filepath.Join(x.dir, "qr")
	x.tsk = x.startAsNobody(x.lab.Proxy, "--log-level", "debug", "wg", "--proxy", fmt.Sprintf("http://%s:%d", remote4, mitmPort),
		"--state", state, "--qr-png", qrDir, "--peer", "pixel", "--peer", "ipad", "--summary-interval", "1s",
		"--pcap-peers", filepath.Join(x.dir, "pcap"))
	x.waitLog(x.tsk, "WireGuard inbound listening", 20*time.Second)
	x.checkUnprivileged()

	// Each phone imports its config from the QR code, as a phone would.
	pixel := x.phoneFromQR(zbarimg, wgGo, wgTool, x.lab.App, "pixel", filepath.Join(qrDir, "pixel.png"), lab.ProxyDown4.Addr())
	ipad := x.phoneFromQR(zbarimg, wgGo, wgTool, x.phone2, "ipad", filepath.Join(qrDir, "ipad.png"), hostToPh2.Addr())

	for _, ns := range []string{pixel, ipad} {
		x.curlOK(curl, ns, "http://"+phoneName+"/", "")
		x.curlOK(curl, ns, "https://"+phoneName+"/", filepath.Join(x.dir, "mitm", "mitmproxy-ca-cert.pem"))
	}
	// The web server saw the name, through mitmproxy.
	for range 4 {
		select {
		case h := <-x.seen:
			if h != phoneName {
				t.Errorf("the web server saw Host %q", h)
			}
		case <-time.After(testenv.Patience):
			t.Fatal("the web server saw fewer than 4 requests")
		}
	}
	// mitmproxy recorded both requests by name, and the CONNECT carried
	// the name, not a fake IP.
	x.waitLog(x.mitm, "GET http://"+phoneName+"/", 5*time.Second)
	x.waitLog(x.mitm, "GET https://"+phoneName+"/", 5*time.Second)
	x.waitLog(x.mitm, "CONNECT "+phoneName+":443", 5*time.Second)
	if regexp.MustCompile(`CONNECT 198\.18\.|CONNECT \[?fc00`).MatchString(x.mitm.out.String()) {
		t.Errorf("a CONNECT carried a fake IP:\n%s", x.mitm.out.String())
	}
	// tunsocks' flow log names each peer.
	for _, peer := range []string{"pixel", "ipad"} {
		x.waitLogMatch(x.tsk, regexp.MustCompile(`msg=flow .*host=`+regexp.QuoteMeta(phoneName)+` in=wg user=`+peer+`\b`), 5*time.Second)
	}
	// The summary line carries each peer's handshake and bytes.
	x.waitLogMatch(x.tsk, regexp.MustCompile(`msg=summary .*wg_peers="[^"]*ipad: handshake \d+s ago, rx \d+ B, tx \d+ B[^"]*pixel: handshake`), 5*time.Second)

	// QUIC gets port unreachable, DNS over TLS a RST; neither reaches
	// mitmproxy.
	x.quicRefused(pixel)
	x.dotReset(pixel)
	x.waitLogMatch(x.tsk, regexp.MustCompile(`msg=decision net=udp .*dst=192\.0\.2\.1:443 .*outbound=REJECT rule=.*(?i:quic)`), 5*time.Second)
	x.waitLogMatch(x.tsk, regexp.MustCompile(`msg=decision net=tcp .*dst=192\.0\.2\.1:853 .*outbound=REJECT rule=.*(?i:dns over tls)`), 5*time.Second)
	if strings.Contains(x.mitm.out.String(), ":853") {
		t.Errorf("mitmproxy saw port 853:\n%s", x.mitm.out.String())
	}

	// Removing a peer while tunsocks runs cuts it off; the other goes on.
	out, err := x.runAsNobody(x.lab.Proxy, "wg", "remove-peer", "--state", state, "ipad")
	if err != nil {
		t.Fatalf("remove-peer: %v\n%s", err, out)
	}
	x.waitLogMatch(x.tsk, regexp.MustCompile(`WireGuard peers updated .*removed=\[?ipad`), 10*time.Second)
	if out, err := x.inNS(x.phone2, 15*time.Second, curl, "-sS", "--max-time", "4", "http://"+phoneName+"/"); err == nil {
		t.Fatalf("the removed peer still gets through:\n%s", out)
	}
	x.curlOK(curl, pixel, "http://"+phoneName+"/", "")

	// It stops cleanly on SIGTERM, and each peer's pcap holds its own
	// packets only.
	syscall.Kill(x.tsk.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-x.tsk.done:
	case <-time.After(15 * time.Second):
		t.Fatal("tunsocks did not stop on SIGTERM")
	}
	if !x.tsk.cmd.ProcessState.Success() {
		t.Fatalf("tunsocks exited with %v", x.tsk.cmd.ProcessState)
	}
	x.checkPeerPcap("pixel", "10.7.0.2", "fd07::2")
	x.checkPeerPcap("ipad", "10.7.0.3", "fd07::3")
}

// checkPeerPcap: pcap-peers/NAME.pcap holds the peer's TCP to name.test's
// fake addresses and its DNS, every packet from or to one of its addresses.
func (x *wgLab) checkPeerPcap(peer string, addrs ...string) {
	t := x.t
	t.Helper()
	f, err := os.Open(filepath.Join(x.dir, "pcap", peer+".pcap"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	own := map[netip.Addr]bool{}
	for _, a := range addrs {
		own[netip.MustParseAddr(a)] = true
	}
	var n, syn, dns int
	for {
		data, _, err := r.ReadPacketData()
		if err != nil {
			break
		}
		n++
		p := gopacket.NewPacket(data, layers.LinkTypeRaw, gopacket.Default)
		nl := p.NetworkLayer()
		if nl == nil {
			t.Fatalf("%s.pcap: packet %d is not IP", peer, n)
		}
		src, _ := netip.AddrFromSlice(nl.NetworkFlow().Src().Raw())
		dst, _ := netip.AddrFromSlice(nl.NetworkFlow().Dst().Raw())
		if !own[src.Unmap()] && !own[dst.Unmap()] {
			t.Fatalf("%s.pcap: packet %d from %s to %s is not the peer's", peer, n, src, dst)
		}
		if tcp, ok := p.TransportLayer().(*layers.TCP); ok && tcp.SYN && !tcp.ACK && (tcp.DstPort == 80 || tcp.DstPort == 443) {
			syn++
		}
		if udp, ok := p.TransportLayer().(*layers.UDP); ok && udp.DstPort == 53 {
			dns++
		}
	}
	if syn < 2 || dns < 1 {
		t.Fatalf("%s.pcap: %d packets, %d SYNs to 80/443, %d DNS queries; want the two curls and their lookups", peer, n, syn, dns)
	}
}

func newWGLab(t *testing.T) *wgLab {
	t.Helper()
	l, err := lab.New(lab.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	x := &wgLab{env: &env{t: t, lab: l, app: &direct.Dialer{Netns: l.Proxy, Timeout: 10 * time.Second}, ctx: ctx, cancel: cancel},
		phone2: l.App[:len(l.App)-len("app")] + "phone2", seen: make(chan string, 16)}
	t.Cleanup(func() {
		cancel()
		for _, p := range []*proc{x.tsk, x.mitm} {
			if p != nil {
				p.stop()
			}
		}
		x.wg.Wait()
		if t.Failed() {
			for name, p := range map[string]*proc{"tunsocks": x.tsk, "mitmdump": x.mitm} {
				if p != nil {
					out := p.out.String()
					if len(out) > 30000 {
						out = "...\n" + out[len(out)-30000:]
					}
					t.Logf("---- %s output ----\n%s", name, out)
				}
			}
		}
		var errs []error
		if netns.Exists(x.phone2) {
			errs = append(errs, netns.Delete(x.phone2))
		}
		errs = append(errs, os.RemoveAll(filepath.Join("/etc/netns", x.phone2)), l.Close())
		if err := errors.Join(errs...); err != nil {
			t.Errorf("removing the lab: %v", err)
		}
	})
	// The second phone hangs off the host too.
	if err := netns.Create(x.phone2); err != nil {
		t.Fatal(err)
	}
	if err := l.Link(l.Proxy, "down1", hostToPh2, hostToPh26, x.phone2, "up0", phone2Up, phone2Up6, 0); err != nil {
		t.Fatal(err)
	}
	// The host's default route points at the remote host, so tunsocks
	// finds one endpoint: its address there, which each phone reaches
	// through its own link.
	if err := lab.WithNetlink(l.Proxy, func(h *netlink.Handle) error {
		return h.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, Gw: lab.Remote4.Addr().AsSlice()})
	}); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{l.Proxy, l.Remote} {
		if err := l.Do(ns, func() error {
			return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644)
		}); err != nil {
			t.Fatal(err)
		}
	}
	// Files the unprivileged tunsocks writes, and a copy of the binary
	// it can run.
	// (t.TempDir's parent is private to root.)
	dir, err := os.MkdirTemp("", "tunsocks-wg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	x.dir = dir
	for _, d := range []string{x.dir, filepath.Join(x.dir, "state"), filepath.Join(x.dir, "qr"), filepath.Join(x.dir, "pcap"), filepath.Join(x.dir, "bin")} {
		os.MkdirAll(d, 0o755)
		os.Chmod(d, 0o755)
	}
	for _, d := range []string{filepath.Join(x.dir, "state"), filepath.Join(x.dir, "qr"), filepath.Join(x.dir, "pcap")} {
		if err := os.Chown(d, nobody, nobody); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, binary, filepath.Join(x.dir, "bin", "tunsocks"))
	os.Chmod(filepath.Join(x.dir, "bin", "tunsocks"), 0o755)

	// name.test on the remote host, as mitmproxy resolves it.
	os.MkdirAll(filepath.Join("/etc/netns", l.Remote), 0o755)
	if err := os.WriteFile(filepath.Join("/etc/netns", l.Remote, "hosts"), []byte("127.0.0.1 localhost\n"+remote4.String()+" "+phoneName+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := l.Do(l.Remote, func() error { return x.startWebServers() }); err != nil {
		t.Fatal(err)
	}
	return x
}

// startWebServers serves name.test over HTTP and HTTPS on the remote host
// (call inside its namespace), reporting each request's Host.
func (x *wgLab) startWebServers() error {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case x.seen <- r.Host:
		default:
		}
		fmt.Fprintf(w, "hello from %s\n", r.Host)
	})
	for _, tls := range []bool{false, true} {
		port := 80
		if tls {
			port = 443
		}
		ln, err := net.Listen("tcp", netip.AddrPortFrom(remote4, uint16(port)).String())
		if err != nil {
			return err
		}
		s := httptest.NewUnstartedServer(h)
		s.Listener.Close()
		s.Listener = ln
		if tls {
			s.StartTLS()
		} else {
			s.Start()
		}
		x.wg.Add(1)
		go func() { defer x.wg.Done(); <-x.ctx.Done(); s.Close() }()
	}
	return nil
}

// mitmAddon prints each CONNECT request: the HTTP CONNECT log.
const mitmAddon = `def http_connect(flow):
    print("CONNECT %s:%d" % (flow.request.host, flow.request.port), flush=True)
`

func (x *wgLab) startMitmdump(mitmdump string) {
	t := x.t
	conf := filepath.Join(x.dir, "mitm")
	os.MkdirAll(conf, 0o755)
	addon := filepath.Join(x.dir, "connect_log.py")
	os.WriteFile(addon, []byte(mitmAddon), 0o644)
	x.mitm = x.start(x.lab.Remote, mitmdump, "--listen-host", remote4.String(), "--listen-port", fmt.Sprint(mitmPort),
		"--set", "confdir="+conf, "--ssl-insecure", "-s", addon)
	// mitmdump takes seconds to start under load.
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := x.app.DialContext(x.ctx, "tcp", netip.AddrPortFrom(remote4, mitmPort).String())
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("mitmdump never listened: %v\n%s", err, x.mitm.out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startAsNobody runs the copied tunsocks binary in namespace ns as uid
// and gid 65534, with no capabilities.
func (x *wgLab) startAsNobody(ns string, args ...string) *proc {
	x.t.Helper()
	p := &proc{out: &testenv.Buffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(filepath.Join(x.dir, "bin", "tunsocks"), args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.Dir = x.dir
	p.cmd.Env = []string{"HOME=/nonexistent", "PATH=/usr/bin:/bin"}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: &syscall.Credential{Uid: nobody, Gid: nobody, Groups: []uint32{}}}
	// A child forked from a thread inside ns is born in ns.
	if err := netns.Do(ns, p.cmd.Start); err != nil {
		x.t.Fatalf("start tunsocks as nobody: %v", err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	x.t.Cleanup(p.stop)
	return p
}

func (x *wgLab) runAsNobody(ns string, args ...string) (string, error) {
	p := x.startAsNobody(ns, args...)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.kill()
		return p.out.String(), errors.New("timed out")
	}
	if !p.cmd.ProcessState.Success() {
		return p.out.String(), fmt.Errorf("exit: %v", p.cmd.ProcessState)
	}
	return p.out.String(), nil
}

// checkUnprivileged: the WireGuard server runs as uid 65534 with no
// effective capabilities.
func (x *wgLab) checkUnprivileged() {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", x.tsk.cmd.Process.Pid))
	if err != nil {
		x.t.Fatal(err)
	}
	s := string(b)
	if !regexp.MustCompile(`(?m)^Uid:\s+65534\s+65534\s+65534\s+65534$`).MatchString(s) ||
		!regexp.MustCompile(`(?m)^CapEff:\s+0+$`).MatchString(s) {
		x.t.Fatalf("tunsocks is not unprivileged:\n%s", s)
	}
}

func (x *wgLab) waitLog(p *proc, want string, d time.Duration) {
	x.t.Helper()
	x.waitLogMatch(p, regexp.MustCompile(regexp.QuoteMeta(want)), d)
}

func (x *wgLab) waitLogMatch(p *proc, re *regexp.Regexp, d time.Duration) {
	x.t.Helper()
	deadline := time.Now().Add(d)
	for !re.MatchString(p.out.String()) {
		select {
		case <-p.done:
			x.t.Fatalf("exited (%v) before its output matched %q:\n%s", p.cmd.ProcessState, re, p.out.String())
		default:
		}
		if time.Now().After(deadline) {
			x.t.Fatalf("no output matching %q within %v", re, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (x *wgLab) inNS(ns string, timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(x.ctx, timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...).CombinedOutput()
	return string(out), err
}

func (x *wgLab) curlOK(curl, ns, url, cacert string) {
	x.t.Helper()
	args := []string{"-sS", "--max-time", "15", url}
	if cacert != "" {
		args = append(args, "--cacert", cacert)
	}
	out, err := x.inNS(ns, 20*time.Second, curl, args...)
	if err != nil || !strings.Contains(out, "hello from "+phoneName) {
		show, _ := x.inNS(ns, 5*time.Second, "wg", "show")
		routes, _ := x.inNS(ns, 5*time.Second, "ip", "route")
		links, _ := x.inNS(ns, 5*time.Second, "ip", "addr")
		var wgo []string
		for _, p := range x.phones {
			wgo = append(wgo, p.out.String())
		}
		x.t.Fatalf("curl %s in %s: %v\n%s\nwg show:\n%s\nroutes:\n%s\naddresses:\n%s\nwireguard-go:\n%s", url, ns, err, out, show, routes, links, strings.Join(wgo, "\n"))
	}
}

// phoneFromQR reads the QR code back with zbarimg, checks it against the
// .conf file, and sets up Debian's wireguard-go in namespace ns from it:
// the interface, its addresses and MTU, default routes into the tunnel, a
// route to the endpoint through via, and the config's DNS server.
func (x *wgLab) phoneFromQR(zbarimg, wgGo, wgTool, ns, peer, png string, via netip.Addr) string {
	t := x.t
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(png); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s was never written", png)
		}
		time.Sleep(50 * time.Millisecond)
	}
	out, err := exec.Command(zbarimg, "--raw", "-q", png).Output()
	if err != nil {
		t.Fatalf("zbarimg %s: %v", png, err)
	}
	text := strings.TrimSuffix(string(out), "\n") // zbarimg ends each symbol's text with a newline
	conf, _ := os.ReadFile(strings.TrimSuffix(png, ".png") + ".conf")
	if text != string(conf) {
		t.Fatalf("the QR code says:\n%q\nthe .conf file says:\n%q", text, conf)
	}
	if !strings.Contains(x.tsk.out.String(), text) {
		t.Fatalf("the config printed to the terminal differs from the QR code's:\n%s", text)
	}
	c, err := wg.ParseClientConfig(text)
	if err != nil {
		t.Fatal(err)
	}
	wantEP := netip.AddrPortFrom(lab.ProxyUp4.Addr(), wgPort).String()
	if c.Endpoint != wantEP {
		t.Fatalf("Endpoint %s, want %s (the host's default route source)", c.Endpoint, wantEP)
	}
	// wg(8) takes the config without wg-quick's Address, DNS and MTU.
	var b strings.Builder
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if k, _, _ := strings.Cut(line, "="); strings.TrimSpace(k) != "Address" && strings.TrimSpace(k) != "DNS" && strings.TrimSpace(k) != "MTU" {
			b.WriteString(line + "\n")
		}
	}
	wgConf := filepath.Join(x.dir, peer+".wg")
	os.WriteFile(wgConf, []byte(b.String()), 0o600)

	ifname := fmt.Sprintf("tskwg%d%s", os.Getpid()%100000, peer[:1])
	p := &proc{out: &testenv.Buffer{}, done: make(chan struct{})}
	p.cmd = exec.Command("ip", "netns", "exec", ns, wgGo, "-f", ifname)
	p.cmd.Env = append(os.Environ(), "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1", "LOG_LEVEL=error")
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	x.phones = append(x.phones, p)
	t.Cleanup(func() {
		p.stop()
		os.Remove("/var/run/wireguard/" + ifname + ".sock")
	})
	sock := "/var/run/wireguard/" + ifname + ".sock"
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("wireguard-go made no %s:\n%s", sock, p.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	steps := [][]string{
		// The endpoint's own route first: the keepalive that setconf
		// starts sends a handshake at once.
		{"ip", "route", "add", netip.MustParseAddrPort(c.Endpoint).Addr().String() + "/32", "via", via.String()},
		{wgTool, "setconf", ifname, wgConf},
		{"ip", "link", "set", ifname, "mtu", fmt.Sprint(c.MTU), "up"},
	}
	for _, a := range c.Addresses {
		step := []string{"ip", "addr", "add", a.String(), "dev", ifname}
		if a.Addr().Is6() {
			// Usable at once: even where no duplicate detection runs
			// (loopback, NOARP), an address stays tentative until the
			// kernel's work queue gets to it, later on a loaded host.
			step = append(step, "nodad")
		}
		steps = append(steps, step)
	}
	steps = append(steps,
		[]string{"ip", "route", "add", "default", "dev", ifname},
		[]string{"ip", "-6", "route", "add", "default", "dev", ifname})
	for _, s := range steps {
		if out, err := x.inNS(ns, 10*time.Second, s[0], s[1:]...); err != nil {
			t.Fatalf("%s in %s: %v\n%s", strings.Join(s, " "), ns, err, out)
		}
	}
	if len(c.DNS) == 0 {
		t.Fatal("the config names no DNS server")
	}
	if err := x.lab.SetResolvConf(ns, c.DNS[0]); err != nil {
		t.Fatal(err)
	}
	return ns
}

// quicRefused: a UDP datagram to port 443 is answered with ICMP port
// unreachable, which a connected socket reports as ECONNREFUSED.
func (x *wgLab) quicRefused(ns string) {
	t := x.t
	t.Helper()
	d := &direct.Dialer{Netns: ns, Timeout: 5 * time.Second}
	c, err := d.DialContext(x.ctx, "udp", "192.0.2.1:443")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("\xc0QUIC initial"))
	_, err = c.Read(make([]byte, 100))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("UDP to 443: %v, want connection refused (ICMP port unreachable)", err)
	}
}

// dotReset: a TCP connection to port 853 gets a RST at once.
func (x *wgLab) dotReset(ns string) {
	t := x.t
	t.Helper()
	d := &direct.Dialer{Netns: ns, Timeout: 5 * time.Second}
	c, err := d.DialContext(x.ctx, "tcp", "192.0.2.1:853")
	if err == nil {
		c.Close()
		t.Fatal("TCP to 853 connected")
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("TCP to 853: %v, want connection refused (RST)", err)
	}
}

// TestWireGuardNextToTUN: 'tunsocks run' with a wireguard: section serves
// its TUN and WireGuard peers at once, through the same rules and upstream.
// The peer here is a wireguard-go device inside the test process whose UDP
// socket lives on the proxy host, configured from the .conf file.
func TestWireGuardNextToTUN(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "tunsocks.yaml")
	os.WriteFile(conf, []byte(fmt.Sprintf("wireguard:\n  state: %s\n  peers: [tab]\n  qr-png: %s\n  qr: false\n",
		filepath.Join(dir, "wg.json"), filepath.Join(dir, "qr"))), 0o600)
	e := newEnv(t, ourServer, "--config", conf)
	deadline := time.Now().Add(15 * time.Second)
	var text []byte
	for {
		var err error
		if text, err = os.ReadFile(filepath.Join(dir, "qr", "tab.conf")); err == nil && len(text) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no tab.conf:\n%s", e.tunsocks.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	c, err := wg.ParseClientConfig(string(text))
	if err != nil {
		t.Fatal(err)
	}
	// The app host's default route is the TUN, which is never an
	// endpoint: its uplink address is.
	if want := netip.AddrPortFrom(lab.AppUplink4.Addr(), wgPort).String(); c.Endpoint != want {
		t.Fatalf("Endpoint %s, want %s", c.Endpoint, want)
	}
	proxyHost := &direct.Dialer{Netns: e.lab.Proxy}
	tnet := inProcessPhone(t, c, proxyHost.ListenPacket, lab.ProxyDown4.Addr())

	ctx, cancel := context.WithTimeout(e.ctx, 20*time.Second)
	defer cancel()
	hc := &http.Client{Transport: &http.Transport{DialContext: tnet.DialContext, DisableKeepAlives: true}}
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+remote4.String()+"/", nil)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("GET through the WireGuard peer: %v\n%s", err, e.tunsocks.out.String())
	}
	body := make([]byte, 200)
	n, _ := resp.Body.Read(body)
	resp.Body.Close()
	// The remote sees the SOCKS server: the peer's flow took the upstream.
	if !strings.Contains(string(body[:n]), "hello from remote, you are "+lab.ProxyUp4.Addr().String()) {
		t.Fatalf("remote answered %q", body[:n])
	}
	e.curl(t, "http://"+remote4.String()+"/") // and the TUN still works
	x := &wgLab{env: e}
	x.waitLogMatch(e.tunsocks, regexp.MustCompile(`msg=flow net=tcp src=10\.7\.0\.2:\d+ dst=`+regexp.QuoteMeta(remote4.String())+`:80 .* in=wg user=tab\b`), 10*time.Second)
	x.waitLogMatch(e.tunsocks, regexp.MustCompile(`msg=flow net=tcp src=198\.18\.0\.1:\d+ dst=`+regexp.QuoteMeta(remote4.String())+`:80 .* in=tsk0\b`), 10*time.Second)
}

// inProcessPhone is a wireguard-go device in this process (its own
// netstack) whose UDP socket is opened by listen on addr.
func inProcessPhone(t *testing.T, c wg.ClientConfig, listen wg.ListenFunc, addr netip.Addr) *netstack.Net {
	t.Helper()
	var addrs []netip.Addr
	for _, p := range c.Addresses {
		addrs = append(addrs, p.Addr())
	}
	tdev, tnet, err := netstack.CreateNetTUN(addrs, c.DNS, c.MTU)
	if err != nil {
		t.Fatal(err)
	}
	dev := device.NewDevice(tdev, wg.NewBind(context.Background(), listen, addr), device.NewLogger(device.LogLevelSilent, ""))
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
