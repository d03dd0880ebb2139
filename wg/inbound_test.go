package wg

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/tunsocks/tunsocks/stack"
)

func loopbackListen(ctx context.Context, network, address string) (net.PacketConn, error) {
	var lc net.ListenConfig
	return lc.ListenPacket(ctx, network, address)
}

// echoHandler accepts every TCP flow and echoes it, echoes every UDP
// datagram back from where it was sent, and records the flows' sources.
type echoHandler struct {
	mu   sync.Mutex
	srcs []netip.AddrPort
	dsts []netip.AddrPort
}

func (h *echoHandler) record(src, dst netip.AddrPort) {
	h.mu.Lock()
	h.srcs = append(h.srcs, src)
	h.dsts = append(h.dsts, dst)
	h.mu.Unlock()
}

func (h *echoHandler) HandleTCP(ctx context.Context, r *stack.TCPRequest) {
	h.record(r.Src(), r.Dst())
	c, err := r.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	io.Copy(c, c)
}

func (h *echoHandler) HandleUDP(ctx context.Context, f *stack.UDPFlow) {
	defer f.Close()
	stop := context.AfterFunc(ctx, func() { f.Close() })
	defer stop()
	buf := make([]byte, 2048)
	for {
		n, dst, err := f.ReadFrom(buf)
		if err != nil {
			return
		}
		h.record(f.Src(), dst)
		f.WriteTo(buf[:n], dst)
	}
}

func (h *echoHandler) sources() []netip.AddrPort {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]netip.AddrPort(nil), h.srcs...)
}

// server is an Inbound on loopback feeding a stack with an echo handler.
type server struct {
	in    *Inbound
	st    *stack.Stack
	h     *echoHandler
	state *State
}

func newServer(t *testing.T, peers ...string) *server { return newBenchServer(t, peers...) }

func newBenchServer(t testing.TB, peers ...string) *server {
	t.Helper()
	s, _, err := OpenState(filepath.Join(t.TempDir(), "wg.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range peers {
		if _, _, err := s.AddPeer(p); err != nil {
			t.Fatal(err)
		}
	}
	in, err := Start(context.Background(), Config{
		Listen:       netip.MustParseAddrPort("127.0.0.1:0"),
		ListenPacket: loopbackListen,
		PrivateKey:   s.Server,
		Peers:        s.Peers,
	})
	if err != nil {
		t.Fatal(err)
	}
	h := &echoHandler{}
	st, err := stack.New(context.Background(), stack.Config{Device: in.Device(), Handler: h})
	if err != nil {
		in.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		st.Close()
		in.Close()
	})
	return &server{in: in, st: st, h: h, state: s}
}

// phone is a second wireguard-go device in this process, with a netstack
// of its own for its apps, configured from the text a user would scan.
type phone struct {
	dev  *device.Device
	net  *netstack.Net
	addr netip.Addr
}

func newPhone(t *testing.T, configText string) *phone { return newPhoneTB(t, configText) }

func newPhoneTB(t testing.TB, configText string) *phone {
	t.Helper()
	c, err := ParseClientConfig(configText)
	if err != nil {
		t.Fatal(err)
	}
	var addrs []netip.Addr
	for _, p := range c.Addresses {
		addrs = append(addrs, p.Addr())
	}
	tdev, tnet, err := netstack.CreateNetTUN(addrs, c.DNS, c.MTU)
	if err != nil {
		t.Fatal(err)
	}
	dev := device.NewDevice(tdev, NewBind(context.Background(), loopbackListen, netip.MustParseAddr("127.0.0.1")), device.NewLogger(device.LogLevelSilent, ""))
	var b strings.Builder
	fmt.Fprintf(&b, "private_key=%s\npublic_key=%s\nendpoint=%s\npersistent_keepalive_interval=%d\n",
		c.PrivateKey.Hex(), c.ServerKey.Hex(), c.Endpoint, c.Keepalive)
	for _, a := range c.AllowedIPs {
		fmt.Fprintf(&b, "allowed_ip=%s\n", a)
	}
	if err := dev.IpcSet(b.String()); err != nil {
		dev.Close()
		t.Fatal(err)
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		t.Fatal(err)
	}
	t.Cleanup(dev.Close)
	return &phone{dev: dev, net: tnet, addr: addrs[0]}
}

func (s *server) phone(t *testing.T, name string) *phone {
	p, ok := s.state.Peer(name)
	if !ok {
		t.Fatalf("no peer %s", name)
	}
	return newPhone(t, s.state.ClientConfig(p, netipLoopback(s.in.Port()), DefaultMTU).String())
}

func netipLoopback(port uint16) string { return fmt.Sprintf("127.0.0.1:%d", port) }

// echo sends msg over TCP to dst from the phone and expects it back.
func (p *phone) echoTCP(ctx context.Context, dst netip.AddrPort, msg string) error {
	c, err := p.net.DialContextTCPAddrPort(ctx, dst)
	if err != nil {
		return err
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != msg {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

func TestInboundPhoneTalksThroughTheStack(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	srv := newServer(t, "pixel", "ipad")
	pixel, ipad := srv.phone(t, "pixel"), srv.phone(t, "ipad")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// TCP to IPv4 and IPv6 destinations anywhere: the stack terminates
	// them all and hands them to the handler.
	for _, dst := range []string{"192.0.2.10:80", "[2001:db8::10]:443"} {
		if err := pixel.echoTCP(ctx, netip.MustParseAddrPort(dst), "hello "+dst); err != nil {
			t.Fatalf("pixel TCP to %s: %v", dst, err)
		}
	}
	big := strings.Repeat("0123456789abcdef", 64<<10) // 1 MiB: many batches both ways
	if err := ipad.echoTCP(ctx, netip.MustParseAddrPort("198.51.100.7:9000"), big); err != nil {
		t.Fatalf("ipad 1 MiB echo: %v", err)
	}
	// UDP.
	uc, err := pixel.net.DialUDPAddrPort(netip.AddrPort{}, netip.MustParseAddrPort("192.0.2.53:5353"))
	if err != nil {
		t.Fatal(err)
	}
	uc.SetDeadline(time.Now().Add(10 * time.Second))
	uc.Write([]byte("ping"))
	buf := make([]byte, 64)
	n, err := uc.Read(buf)
	uc.Close()
	if err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("UDP echo: %q, %v", buf[:n], err)
	}

	// Every flow came from a peer's own tunnel address, and the
	// inbound names the peer by it.
	names := map[string]bool{}
	for _, src := range srv.h.sources() {
		names[srv.in.PeerName(src.Addr())] = true
		if !src.Addr().IsPrivate() {
			t.Errorf("flow from %s: not a tunnel address", src)
		}
	}
	if !names["pixel"] || !names["ipad"] || names[""] {
		t.Fatalf("peers seen: %v", names)
	}
	p, _ := srv.state.Peer("pixel")
	if srv.in.PeerName(p.Addr6) != "pixel" || srv.in.PeerName(netip.MustParseAddr("10.7.0.99")) != "" {
		t.Fatal("PeerName by address")
	}

	// The device's status shows both handshakes and the bytes.
	sts, err := srv.in.Status()
	if err != nil {
		t.Fatal(err)
	}
	if len(sts) != 2 || sts[0].Name != "ipad" || sts[1].Name != "pixel" {
		t.Fatalf("status: %+v", sts)
	}
	for _, s := range sts {
		if s.LastHandshake.IsZero() || time.Since(s.LastHandshake) > time.Minute || s.RxBytes == 0 || s.TxBytes == 0 || !strings.HasPrefix(s.Endpoint, "127.0.0.1:") {
			t.Errorf("peer %s: %+v", s.Name, s)
		}
	}
	if sts[0].RxBytes < 1<<20 || sts[0].TxBytes < 1<<20 {
		t.Errorf("ipad moved 1 MiB each way, status says rx %d tx %d", sts[0].RxBytes, sts[0].TxBytes)
	}
	toStack, fromStack := srv.in.PipeStats()
	if toStack.Packets == 0 || fromStack.Packets == 0 {
		t.Fatalf("pipe stats %+v %+v", toStack, fromStack)
	}

	// Removing a peer cuts it off at once; the other goes on.
	keep, _ := srv.state.Peer("ipad")
	if err := srv.in.SetPeers([]Peer{keep}); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 1500*time.Millisecond)
	err = pixel.echoTCP(short, netip.MustParseAddrPort("192.0.2.10:80"), "after removal")
	cancelShort()
	if err == nil {
		t.Fatal("a removed peer still gets through")
	}
	if err := ipad.echoTCP(ctx, netip.MustParseAddrPort("192.0.2.10:80"), "still here"); err != nil {
		t.Fatalf("the remaining peer: %v", err)
	}
	if srv.in.PeerName(p.Addr4) != "" {
		t.Fatal("removed peer still named by its address")
	}
	// Added back, it joins again (a fresh device: the old one would
	// wait out WireGuard's 15 s rekey timeout on its dead session).
	if err := srv.in.SetPeers(srv.state.Peers); err != nil {
		t.Fatal(err)
	}
	pixel.dev.Close()
	pixel = srv.phone(t, "pixel")
	if err := pixel.echoTCP(ctx, netip.MustParseAddrPort("192.0.2.10:80"), "back"); err != nil {
		t.Fatalf("re-added peer: %v", err)
	}
	pixel.dev.Close()
	ipad.dev.Close()
	srv.st.Close()
	srv.in.Close()
}

func TestInboundRefusesAnUnknownKey(t *testing.T) {
	srv := newServer(t, "pixel")
	// A stranger with a config of the right shape but its own key.
	stranger, _, _ := OpenState(filepath.Join(t.TempDir(), "other.json"))
	sp, _, _ := stranger.AddPeer("pixel")
	c := srv.state.ClientConfig(sp, fmt.Sprintf("127.0.0.1:%d", srv.in.Port()), DefaultMTU)
	ph := newPhone(t, c.String())
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	if err := ph.echoTCP(ctx, netip.MustParseAddrPort("192.0.2.10:80"), "x"); err == nil {
		t.Fatal("a key not in the state got through")
	}
	if n := len(srv.h.sources()); n != 0 {
		t.Fatalf("%d flows reached the handler", n)
	}
	sts, _ := srv.in.Status()
	if len(sts) != 1 || !sts[0].LastHandshake.IsZero() {
		t.Fatalf("status %+v", sts)
	}
}

func TestInboundConfigErrors(t *testing.T) {
	key, _ := NewPrivateKey()
	if _, err := Start(context.Background(), Config{ListenPacket: loopbackListen}); err == nil {
		t.Fatal("no key accepted")
	}
	if _, err := Start(context.Background(), Config{ListenPacket: loopbackListen, PrivateKey: key, MTU: 1000}); err == nil {
		t.Fatal("MTU 1000 accepted")
	}
	if _, err := Start(context.Background(), Config{PrivateKey: key}); err == nil {
		t.Fatal("no ListenPacket accepted")
	}
}
