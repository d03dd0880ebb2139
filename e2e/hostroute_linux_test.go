package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/netns"
	"github.com/tunsocks/tunsocks/internal/testenv"
)

// Whole-host capture (tunsocks run --auto-route / --gateway) end to end.
// Each test builds its own namespaces:
//
//	device ──lan0── host ──up0── wan
//	192.168.50.2    192.168.50.1 / 192.0.2.2    192.0.2.1 (SOCKS server: tunsocks server)
//	                                            203.0.113.10, .20, 2001:db8:2::10 (HTTP, UDP echo)
//	                                            198.51.100.53 (dnsmasq, every query logged)
//
// "host" is the desktop tunsocks routes; it reaches 203.0.113.0/24 and
// 198.51.100.0/24 only through its default gateway, wan.

var (
	hrSOCKS    = netip.MustParseAddrPort("192.0.2.1:1080")
	hrWeb4     = netip.MustParseAddr("203.0.113.10")
	hrWebExcl  = netip.MustParseAddr("203.0.113.20")
	hrWeb6     = netip.MustParseAddr("2001:db8:2::10")
	hrDNS      = netip.MustParseAddr("198.51.100.53")
	hrHostUp   = netip.MustParseAddr("192.0.2.2")
	hrHostLAN  = netip.MustParseAddr("192.168.50.1")
	hrDevice   = netip.MustParseAddr("192.168.50.2")
	hrEchoPort = uint16(7)
)

type hostLab struct {
	t                 *testing.T
	host, wan, device string
	stateDir          string
	ctx               context.Context

	mu      sync.Mutex
	remotes map[string][]string // listener address -> remote address of each request
	udpSrcs []string            // sources of datagrams the UDP echo answered

	socks   *proc
	dnsmasq *testenv.Buffer
	run     *proc // tunsocks run
}

// newHostLab builds the namespaces and starts wan's services. Everything
// is removed when the test ends, also on failure.
func newHostLab(t *testing.T) *hostLab {
	t.Helper()
	testenv.NeedTool(t, "nft", "nftables")
	testenv.NeedTool(t, "curl", "curl")
	testenv.NeedTool(t, "dig", "dnsutils")
	dnsmasq := testenv.NeedTool(t, "dnsmasq", "dnsmasq-base")
	id := fmt.Sprintf("hr-%d-%s", os.Getpid(), strings.ToLower(strings.TrimPrefix(t.Name(), "Test")))
	if len(id) > 24 {
		id = id[:24]
	}
	ctx, cancel := context.WithCancel(context.Background())
	hl := &hostLab{t: t, host: id + "-h", wan: id + "-w", device: id + "-d", stateDir: t.TempDir(), ctx: ctx, remotes: map[string][]string{}}
	for _, n := range []string{hl.host, hl.wan, hl.device} {
		if err := netns.Create(n); err != nil {
			t.Fatal(err)
		}
		n := n
		t.Cleanup(func() {
			os.RemoveAll(filepath.Join("/etc/netns", n))
			if err := netns.Delete(n); err != nil {
				t.Errorf("deleting namespace %s: %v", n, err)
			}
		})
	}
	t.Cleanup(cancel) // runs first: stops the services before the namespaces go
	sh := func(ns, cmdline string) { hl.mustIn(ns, cmdline) }
	for _, n := range []string{hl.host, hl.wan, hl.device} {
		sh(n, "ip link set lo up")
	}
	hl.mustRun("ip", "link", "add", "up0", "netns", hl.host, "type", "veth", "peer", "name", "up0", "netns", hl.wan)
	hl.mustRun("ip", "link", "add", "lan0", "netns", hl.host, "type", "veth", "peer", "name", "eth0", "netns", hl.device)
	for _, c := range []string{"ip addr add 192.0.2.2/24 dev up0", "ip addr add 2001:db8:1::2/64 dev up0 nodad", "ip link set up0 up",
		"ip addr add 192.168.50.1/24 dev lan0", "ip link set lan0 up",
		"ip route add default via 192.0.2.1", "ip -6 route add default via 2001:db8:1::1"} {
		sh(hl.host, c)
	}
	for _, c := range []string{"ip addr add 192.0.2.1/24 dev up0", "ip addr add 2001:db8:1::1/64 dev up0 nodad", "ip link set up0 up",
		"ip addr add 203.0.113.10/32 dev lo", "ip addr add 203.0.113.20/32 dev lo", "ip addr add 2001:db8:2::10/128 dev lo nodad",
		"ip addr add 198.51.100.53/32 dev lo", "ip route add 192.168.50.0/24 via 192.0.2.2"} {
		sh(hl.wan, c)
	}
	for _, c := range []string{"ip addr add 192.168.50.2/24 dev eth0", "ip link set eth0 up", "ip route add default via 192.168.50.1"} {
		sh(hl.device, c)
	}
	// Every namespace resolves through wan's dnsmasq unless a test says
	// otherwise (ip netns exec bind-mounts /etc/netns/NS/resolv.conf).
	for _, n := range []string{hl.host, hl.wan} {
		hl.resolvConf(n, hrDNS)
	}

	for _, a := range []netip.AddrPort{netip.AddrPortFrom(hrWeb4, 80), netip.AddrPortFrom(hrWebExcl, 80), netip.AddrPortFrom(hrWeb6, 80)} {
		hl.serveHTTP(hl.wan, a)
	}
	hl.serveHTTP(hl.device, netip.AddrPortFrom(hrDevice, 80))
	hl.serveUDPEcho(hl.wan, netip.AddrPortFrom(hrWeb4, hrEchoPort))

	dm := hl.startProc(hl.wan, true, nil, "", dnsmasq, "--no-daemon", "--port=53", "--listen-address="+hrDNS.String(), "--bind-interfaces",
		"--no-resolv", "--no-hosts", "--log-queries", "--log-facility=-", "--pid-file=", "--user=root",
		"--address=/web.test/203.0.113.10", "--address=/socks.test/192.0.2.1")
	hl.dnsmasq = dm.out
	// The web servers are addresses of the SOCKS server's own host here,
	// which it refuses unless --allow-loopback.
	hl.socks = hl.startProc(hl.wan, true, nil, "", binary, "server", "--listen", hrSOCKS.String(), "--open", "--allow-loopback")
	hl.waitDial(hl.wan, hrSOCKS)
	hl.waitDNS()
	return hl
}

func (hl *hostLab) mustRun(name string, args ...string) {
	hl.t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		hl.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func (hl *hostLab) mustIn(ns, cmdline string) string {
	hl.t.Helper()
	out, err := hl.in(ns, cmdline)
	if err != nil {
		hl.t.Fatalf("in %s: %s: %v\n%s", ns, cmdline, err, out)
	}
	return out
}

// in runs a command line (split on spaces) in ns under ip netns exec.
func (hl *hostLab) in(ns, cmdline string) (string, error) {
	return hl.inArgs(ns, strings.Fields(cmdline)...)
}

func (hl *hostLab) inArgs(ns string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(hl.ctx, 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	return string(out), err
}

func (hl *hostLab) resolvConf(ns string, server netip.Addr) {
	hl.t.Helper()
	dir := filepath.Join("/etc/netns", ns)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		hl.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte("nameserver "+server.String()+"\noptions timeout:1 attempts:1\n"), 0o644); err != nil {
		hl.t.Fatal(err)
	}
}

// startProc starts a program in ns: under ip netns exec (viaIP, which
// also applies /etc/netns/NS/resolv.conf) or forked from a thread in the
// namespace (which keeps the host's /sys and its cgroup2 mount); as cred
// and in cgroup when given.
func (hl *hostLab) startProc(ns string, viaIP bool, cred *syscall.Credential, cgroup string, name string, args ...string) *proc {
	hl.t.Helper()
	argv := append([]string{name}, args...)
	if cgroup != "" {
		argv = append([]string{"sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, cgroup}, argv...)
	}
	if viaIP {
		argv = append([]string{"ip", "netns", "exec", ns}, argv...)
	}
	p := &proc{out: &testenv.Buffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.Env = append(os.Environ(), "TUNSOCKS_STATE_DIR="+hl.stateDir)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true, Credential: cred}
	start := p.cmd.Start
	var err error
	if viaIP {
		err = start()
	} else {
		err = netns.Do(ns, start)
	}
	if err != nil {
		hl.t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	hl.t.Cleanup(func() { p.stop() })
	return p
}

// output runs a program like startProc and returns its combined output.
func (hl *hostLab) output(ns string, viaIP bool, cred *syscall.Credential, cgroup string, name string, args ...string) (string, error) {
	p := hl.startProc(ns, viaIP, cred, cgroup, name, args...)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		p.kill()
		return p.out.String(), errors.New("timed out")
	}
	if p.cmd.ProcessState.ExitCode() != 0 {
		return p.out.String(), fmt.Errorf("exit status %d", p.cmd.ProcessState.ExitCode())
	}
	return p.out.String(), nil
}

func (hl *hostLab) serveHTTP(ns string, addr netip.AddrPort) {
	hl.t.Helper()
	var ln net.Listener
	if err := netns.Do(ns, func() (err error) { ln, err = net.Listen("tcp", addr.String()); return err }); err != nil {
		hl.t.Fatal(err)
	}
	hs := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		hl.mu.Lock()
		hl.remotes[addr.String()] = append(hl.remotes[addr.String()], host)
		hl.mu.Unlock()
		fmt.Fprintf(w, "hello from %s, you are %s\n", addr, host)
	})}
	done := make(chan struct{})
	go func() { defer close(done); hs.Serve(ln) }()
	hl.t.Cleanup(func() { hs.Close(); <-done })
}

func (hl *hostLab) serveUDPEcho(ns string, addr netip.AddrPort) {
	hl.t.Helper()
	var pc net.PacketConn
	if err := netns.Do(ns, func() (err error) { pc, err = net.ListenPacket("udp", addr.String()); return err }); err != nil {
		hl.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			hl.mu.Lock()
			hl.udpSrcs = append(hl.udpSrcs, from.(*net.UDPAddr).AddrPort().Addr().Unmap().String())
			hl.mu.Unlock()
			pc.WriteTo(buf[:n], from)
		}
	}()
	hl.t.Cleanup(func() { pc.Close(); <-done })
}

// requestsTo returns the remote address of each HTTP request addr served.
func (hl *hostLab) requestsTo(addr netip.AddrPort) []string {
	hl.mu.Lock()
	defer hl.mu.Unlock()
	return slices.Clone(hl.remotes[addr.String()])
}

func (hl *hostLab) waitDial(ns string, addr netip.AddrPort) {
	hl.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var c net.Conn
		err := netns.Do(ns, func() (err error) { c, err = net.DialTimeout("tcp", addr.String(), time.Second); return err })
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			hl.t.Fatalf("%s does not accept connections in %s: %v", addr, ns, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (hl *hostLab) waitDNS() {
	hl.t.Helper()
	for range 50 {
		if out, err := hl.in(hl.wan, "dig +short +time=1 +tries=1 @198.51.100.53 web.test"); err == nil && strings.Contains(out, "203.0.113.10") {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	hl.t.Fatalf("dnsmasq does not answer:\n%s", hl.dnsmasq.String())
}

// snapshot is what a run may change in host: rules, routes, nftables, sysctls.
func (hl *hostLab) snapshot() string {
	hl.t.Helper()
	var b strings.Builder
	for _, c := range []string{"ip rule", "ip -6 rule", "ip route show table all", "ip -6 route show table all", "nft list ruleset"} {
		for _, l := range strings.SplitAfter(hl.mustIn(hl.host, c), "\n") {
			if !strings.Contains(l, "fe80::") { // link-local addresses come and go on their own
				b.WriteString(l)
			}
		}
	}
	for _, s := range []string{"net/ipv4/ip_forward", "net/ipv4/conf/all/src_valid_mark", "net/ipv6/conf/all/forwarding", "net/ipv4/conf/all/rp_filter"} {
		fmt.Fprintf(&b, "%s=%s", s, hl.mustIn(hl.host, "cat /proc/sys/"+s))
	}
	return b.String()
}

func (hl *hostLab) sameAsBefore(base, when string) {
	hl.t.Helper()
	if got := hl.snapshot(); got != base {
		hl.t.Errorf("%s the host differs from before:\n--- before\n%s\n--- after\n%s", when, base, got)
	}
}

// startRun starts tunsocks run in host with the SOCKS server in wan as
// upstream, and waits until it has installed its routing.
func (hl *hostLab) startRun(args ...string) *proc {
	hl.t.Helper()
	p, err := hl.tryRun(args...)
	if err != nil {
		hl.t.Fatal(err)
	}
	return p
}

func (hl *hostLab) tryRun(args ...string) (*proc, error) {
	hl.t.Helper()
	argv := append([]string{"--log-level", "debug", "run", "--proxy", "socks5://" + hrSOCKS.String(), "--tun", "tsk0", "--summary-interval", "0"}, args...)
	p := hl.startProc(hl.host, false, nil, "", binary, argv...)
	hl.t.Cleanup(func() {
		if hl.t.Failed() {
			hl.t.Logf("---- tunsocks run ----\n%s\n---- SOCKS server ----\n%s\n---- dnsmasq ----\n%s", p.out.String(), hl.socks.out.String(), hl.dnsmasq.String())
		}
	})
	deadline := time.After(20 * time.Second)
	for !strings.Contains(p.out.String(), "if tunsocks is killed, run: tunsocks cleanup") {
		select {
		case <-p.done:
			return p, fmt.Errorf("tunsocks run exited:\n%s", p.out.String())
		case <-deadline:
			return p, fmt.Errorf("tunsocks run did not install its routing:\n%s", p.out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	hl.run = p
	return p, nil
}

// stopRun stops tunsocks with SIGTERM and wants a clean exit.
func (hl *hostLab) stopRun(p *proc) {
	hl.t.Helper()
	syscall.Kill(p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		hl.t.Fatalf("tunsocks run did not stop on SIGTERM:\n%s", p.out.String())
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		hl.t.Errorf("tunsocks run exited %d:\n%s", code, p.out.String())
	}
}

// curl fetches url from ns (under ip netns exec, so with its resolv.conf).
func (hl *hostLab) curl(ns string, extra ...string) (string, error) {
	return hl.inArgs(ns, append([]string{"curl", "-sS", "--max-time", "5"}, extra...)...)
}

// dialErr connects from a socket made in ns and returns the error.
func (hl *hostLab) dialErr(ns string, addr netip.AddrPort) error {
	var c net.Conn
	err := netns.Do(ns, func() (err error) { c, err = net.DialTimeout("tcp", addr.String(), 2*time.Second); return err })
	if err == nil {
		c.Close()
	}
	return err
}

// udpEcho sends one datagram from ns to addr and waits for the echo.
func (hl *hostLab) udpEcho(ns string, addr netip.AddrPort) error {
	var c net.Conn
	if err := netns.Do(ns, func() (err error) { c, err = net.Dial("udp", addr.String()); return err }); err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 64)
	for range 5 {
		c.Write([]byte("ping"))
		c.SetReadDeadline(time.Now().Add(time.Second))
		if n, err := c.Read(buf); err == nil && string(buf[:n]) == "ping" {
			return nil
		}
	}
	return errors.New("no echo")
}

// socksRequests counts the SOCKS server's request lines for target. A line
// is written when the request's connection closes: it waits (bounded) for
// at least want of them, and a moment more for any extra (a loop).
func (hl *hostLab) socksRequests(target string, want int) int {
	return countLines(hl.socks.out, "target="+target, want)
}

func countLines(b *testenv.Buffer, s string, want int) int {
	deadline := time.Now().Add(20 * time.Second) // only a failure waits it out
	for strings.Count(b.String(), s) < want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	return strings.Count(b.String(), s)
}

func (hl *hostLab) dnsmasqSawFrom(src netip.Addr) []string {
	var out []string
	for _, l := range strings.Split(hl.dnsmasq.String(), "\n") {
		if strings.Contains(l, "query[") && strings.HasSuffix(strings.TrimSpace(l), "from "+src.String()) {
			out = append(out, l)
		}
	}
	return out
}

// TestAutoRouteWholeHost: with --auto-route and --kill-switch, curl, a UDP
// echo and dig from the host go through the SOCKS server (once each, no
// loop), IPv4 and IPv6; an excluded CIDR and user and the LAN go direct;
// inbound connections still work; no query reaches wan's resolver from
// the host; on exit everything is as before.
func TestAutoRouteWholeHost(t *testing.T) {
	hl := newHostLab(t)
	inbound := netip.AddrPortFrom(hrHostUp, 8022)
	hl.serveHTTP(hl.host, inbound)
	// A published container port, as Docker makes one: host's 8080 is
	// DNAT'd to the device (the "container") behind it.
	published := netip.AddrPortFrom(hrHostUp, 8080)
	hl.mustIn(hl.host, "sysctl -qw net.ipv4.ip_forward=1")
	hl.mustIn(hl.host, "nft add table ip nat")
	hl.mustIn(hl.host, "nft add chain ip nat prerouting { type nat hook prerouting priority -100 ; }")
	hl.mustIn(hl.host, "nft add rule ip nat prerouting iifname up0 tcp dport 8080 dnat to 192.168.50.2:80")
	base := hl.snapshot()
	run := hl.startRun("--auto-route", "--kill-switch", "--exclude", hrWebExcl.String()+"/32", "--exclude-uid", "65534")
	web4 := netip.AddrPortFrom(hrWeb4, 80)

	// A name: resolved by tunsocks (a fake IP), carried as a name.
	out, err := hl.curl(hl.host, "http://web.test/")
	if err != nil || !strings.HasPrefix(out, "hello from "+web4.String()) {
		t.Fatalf("curl http://web.test/ from host: %q %v", out, err)
	}
	if got := hl.requestsTo(web4); len(got) != 1 || got[0] == hrHostUp.String() {
		t.Errorf("web server saw %v: want one request from the SOCKS server's side, not from host %s", got, hrHostUp)
	}
	if n := hl.socksRequests("web.test:80", 1); n != 1 {
		t.Errorf("SOCKS server logged %d requests for web.test:80, want exactly 1 (no loop):\n%s", n, hl.socks.out.String())
	}
	// IPv6, to an address.
	web6 := netip.AddrPortFrom(hrWeb6, 80)
	if out, err := hl.curl(hl.host, "http://["+hrWeb6.String()+"]/"); err != nil || !strings.HasPrefix(out, "hello from "+web6.String()) {
		t.Errorf("curl over IPv6: %q %v", out, err)
	}
	if n := hl.socksRequests(web6.String(), 1); n != 1 {
		t.Errorf("SOCKS server logged %d requests for %s, want 1", n, web6)
	}
	// UDP.
	if err := hl.udpEcho(hl.host, netip.AddrPortFrom(hrWeb4, hrEchoPort)); err != nil {
		t.Errorf("UDP echo through tunsocks: %v", err)
	}
	hl.mu.Lock()
	srcs := slices.Clone(hl.udpSrcs)
	hl.mu.Unlock()
	if len(srcs) == 0 || slices.Contains(srcs, hrHostUp.String()) {
		t.Errorf("UDP echo saw sources %v: want only the SOCKS server's relay", srcs)
	}
	// dig to wan's resolver: answered by tunsocks with a fake IP.
	if out, err := hl.in(hl.host, "dig +short +time=2 +tries=1 @198.51.100.53 other.test"); err != nil || !strings.HasPrefix(strings.TrimSpace(out), "198.1") {
		t.Errorf("dig @198.51.100.53 from host: %q %v, want a fake IP from tunsocks", out, err)
	}
	if leaked := hl.dnsmasqSawFrom(hrHostUp); len(leaked) > 0 {
		t.Errorf("wan's resolver saw queries from host (a DNS leak):\n%s", strings.Join(leaked, "\n"))
	}

	// Excluded destination and user, the LAN: direct.
	excl := netip.AddrPortFrom(hrWebExcl, 80)
	if out, err := hl.curl(hl.host, "http://"+excl.String()+"/"); err != nil || !strings.Contains(out, "you are "+hrHostUp.String()) {
		t.Errorf("--exclude %s: %q %v, want a direct request from %s", hrWebExcl, out, err, hrHostUp)
	}
	if out, err := hl.inArgs(hl.host, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "curl", "-sS", "--max-time", "5", "http://"+web4.String()+"/"); err != nil || !strings.Contains(out, "you are "+hrHostUp.String()) {
		t.Errorf("--exclude-uid 65534: %q %v, want a direct request from %s", out, err, hrHostUp)
	}
	if out, err := hl.curl(hl.host, "http://"+hrDevice.String()+"/"); err != nil || !strings.Contains(out, "you are "+hrHostLAN.String()) {
		t.Errorf("LAN destination with --lan-access: %q %v, want a direct request from %s", out, err, hrHostLAN)
	}
	// Inbound from wan to host, and to a "container" (the device) behind
	// a DNAT'd port of host: the replies leave by main, not the TUN.
	// The client is beyond host's gateway (source 203.0.113.10), so the
	// replies would take the default route: into the TUN, but for the
	// marks nftables gives replies.
	if out, err := hl.curl(hl.wan, "--interface", hrWeb4.String(), "http://"+inbound.String()+"/"); err != nil || !strings.Contains(out, "you are "+hrWeb4.String()) {
		t.Errorf("inbound TCP from wan to host with auto-route and kill switch: %q %v", out, err)
	}
	if out, err := hl.curl(hl.wan, "--interface", hrWeb4.String(), "http://"+published.String()+"/"); err != nil || !strings.Contains(out, "hello from "+hrDevice.String()) {
		t.Errorf("inbound TCP from wan to a DNAT'd port of host with auto-route and kill switch: %q %v", out, err)
	}
	// An IPv6 destination the upstream cannot reach: the app gets a RST at
	// once (and would fall back to IPv4), not a timeout.
	if err := hl.dialErr(hl.host, netip.MustParseAddrPort("[2001:db8:99::1]:80")); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("connect to an IPv6 address the upstream cannot reach: %v, want ECONNREFUSED (a RST at once)", err)
	}
	// explain --route names the rule.
	if out, err := hl.output(hl.host, false, nil, "", binary, "explain", "--route", web4.String()); err != nil || !strings.Contains(out, "9107") || !strings.Contains(out, "proxied") {
		t.Errorf("explain --route %s: %q %v", web4, out, err)
	}
	if out, err := hl.output(hl.host, false, nil, "", binary, "explain", "--route", excl.String()); err != nil || !strings.Contains(out, "9102") {
		t.Errorf("explain --route %s: %q %v", excl, out, err)
	}

	hl.stopRun(run)
	// The association's line is written when it closes, at the latest now.
	if n := countLines(hl.socks.out, "command=UDP-ASSOCIATE", 1); n != 1 {
		t.Errorf("SOCKS server logged %d UDP associations, want 1:\n%s", n, hl.socks.out.String())
	}
	hl.sameAsBefore(base, "after tunsocks exited")
	if out, err := hl.curl(hl.host, "http://"+web4.String()+"/"); err != nil || !strings.Contains(out, "you are "+hrHostUp.String()) {
		t.Errorf("after exit, direct: %q %v", out, err)
	}
}

// TestAutoRouteKilled: SIGKILL with --kill-switch fails closed at once
// (ENETUNREACH; the LAN still works) until tunsocks cleanup, after which
// the host is as before; without it, traffic goes direct at once.
func TestAutoRouteKilled(t *testing.T) {
	hl := newHostLab(t)
	base := hl.snapshot()
	web4 := netip.AddrPortFrom(hrWeb4, 80)

	run := hl.startRun("--auto-route", "--kill-switch")
	run.kill()
	for _, dst := range []netip.AddrPort{web4, netip.AddrPortFrom(hrWeb6, 80)} {
		// The dial's own timeout would be an i/o timeout, not ENETUNREACH.
		if err := hl.dialErr(hl.host, dst); !errors.Is(err, syscall.ENETUNREACH) {
			t.Errorf("after SIGKILL with --kill-switch, connect to %s: %v, want ENETUNREACH", dst, err)
		}
	}
	if out, err := hl.curl(hl.host, "http://"+hrDevice.String()+"/"); err != nil || !strings.Contains(out, "you are") {
		t.Errorf("the LAN after SIGKILL: %q %v", out, err)
	}
	out, err := hl.output(hl.host, false, nil, "", binary, "cleanup", "--tun", "tsk0")
	if err != nil || !strings.Contains(out, fmt.Sprintf("removed leftovers of crashed run, pid %d", run.cmd.Process.Pid)) {
		t.Fatalf("tunsocks cleanup: %q %v", out, err)
	}
	hl.sameAsBefore(base, "after SIGKILL and cleanup")
	if err := hl.dialErr(hl.host, web4); err != nil {
		t.Errorf("after cleanup, connect: %v", err)
	}

	// A run killed with the kill switch on, restarted with the upstream
	// given by name: the name resolves (the leftovers, which would block
	// the query, are removed first) and traffic flows again.
	run = hl.startRun("--auto-route", "--kill-switch")
	run.kill()
	byName := hl.startProc(hl.host, true, nil, "", binary, "--log-level", "debug", "run", "--proxy", "socks5://socks.test:1080", "--tun", "tsk0", "--summary-interval", "0", "--auto-route", "--kill-switch")
	if countLines(byName.out, "if tunsocks is killed, run: tunsocks cleanup", 1) != 1 {
		t.Fatalf("a run with the upstream by name did not start after a tripped kill switch:\n%s", byName.out.String())
	}
	if !strings.Contains(byName.out.String(), fmt.Sprintf("removed leftovers of crashed run, pid %d", run.cmd.Process.Pid)) {
		t.Errorf("the restart did not remove the leftovers:\n%s", byName.out.String())
	}
	if out, err := hl.curl(hl.host, "http://web.test/"); err != nil || !strings.HasPrefix(out, "hello from "+web4.String()) {
		t.Errorf("curl after the restart: %q %v", out, err)
	}
	hl.stopRun(byName)
	hl.sameAsBefore(base, "after the restart by name and exit")

	run = hl.startRun("--auto-route")
	run.kill()
	if out, err := hl.curl(hl.host, "http://"+web4.String()+"/"); err != nil || !strings.Contains(out, "you are "+hrHostUp.String()) {
		t.Errorf("after SIGKILL without --kill-switch, direct at once: %q %v", out, err)
	}
	// The next run removes the leftovers first, and says so.
	run2 := hl.startRun("--auto-route")
	if !strings.Contains(run2.out.String(), fmt.Sprintf("removed leftovers of crashed run, pid %d", run.cmd.Process.Pid)) {
		t.Errorf("the next run did not remove the leftovers:\n%s", run2.out.String())
	}
	hl.stopRun(run2)
	hl.sameAsBefore(base, "after a restart and exit")
}

// TestAutoRouteLocalUpstream: an upstream on 127.0.0.1 run by another
// user, which dials out itself, is excluded by uid: one connection per
// flow, no loop.
func TestAutoRouteLocalUpstream(t *testing.T) {
	hl := newHostLab(t)
	// The binary must be reachable for uid 65534.
	for d := filepath.Dir(binary); d != "/" && d != "/tmp"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	local := netip.MustParseAddrPort("127.0.0.1:1081")
	srv := hl.startProc(hl.host, false, &syscall.Credential{Uid: 65534, Gid: 65534}, "", binary, "server", "--listen", local.String(), "--open")
	hl.waitDial(hl.host, local)
	argv := []string{"--log-level", "debug", "run", "--proxy", "socks5://" + local.String(), "--tun", "tsk0", "--summary-interval", "0", "--auto-route"}
	run := hl.startProc(hl.host, false, nil, "", binary, argv...)
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(run.out.String(), "tunsocks cleanup --tun tsk0") {
		if time.Now().After(deadline) {
			t.Fatalf("tunsocks run did not start:\n%s", run.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(run.out.String(), "local upstream 127.0.0.1:1081 is served by pid") || !strings.Contains(run.out.String(), "uidrange 65534-65534") {
		t.Errorf("the local upstream's user is not excluded:\n%s", run.out.String())
	}
	web4 := netip.AddrPortFrom(hrWeb4, 80)
	out, err := hl.curl(hl.host, "http://"+web4.String()+"/")
	if err != nil || !strings.Contains(out, "you are "+hrHostUp.String()) {
		t.Fatalf("curl through the local upstream: %q %v\n%s\n%s", out, err, run.out.String(), srv.out.String())
	}
	if got := hl.requestsTo(web4); len(got) != 1 {
		t.Errorf("web server saw %d requests, want 1 (no loop): %v", len(got), got)
	}
	if n := countLines(srv.out, "target="+web4.String(), 1); n != 1 {
		t.Errorf("local upstream logged %d requests for %s, want 1 (no loop):\n%s", n, web4, srv.out.String())
	}
	hl.stopRun(run)
}

// TestIncludeCgroup: with --include-cgroup only a process in that cgroup
// is proxied; another one in the same namespace goes direct.
func TestIncludeCgroup(t *testing.T) {
	hl := newHostLab(t)
	cg := testCgroup(t)
	base := hl.snapshot()
	run := hl.startRun("--auto-route", "--include-cgroup", cg)
	web4 := netip.AddrPortFrom(hrWeb4, 80)
	url := "http://" + web4.String() + "/"
	out, err := hl.output(hl.host, false, nil, "", "curl", "-sS", "--max-time", "5", url)
	if err != nil || !strings.Contains(out, "you are "+hrHostUp.String()) {
		t.Errorf("a process outside the cgroup: %q %v, want direct from %s", out, err, hrHostUp)
	}
	out, err = hl.output(hl.host, false, nil, cg, "curl", "-sS", "--max-time", "5", url)
	if err != nil || !strings.HasPrefix(out, "hello from") || strings.Contains(out, "you are "+hrHostUp.String()) {
		t.Errorf("a process in the cgroup: %q %v, want it proxied", out, err)
	}
	if n := hl.socksRequests(web4.String(), 1); n != 1 {
		t.Errorf("SOCKS server logged %d requests for %s, want exactly the cgroup's one", n, web4)
	}
	hl.stopRun(run)
	hl.sameAsBefore(base, "after exit")
}

// TestGatewayDevice: a device whose default route points at the host gets
// its HTTP and DNS through the SOCKS upstream, through a Docker-style
// FORWARD DROP policy; afterwards sysctls, rules and that chain are as
// before.
func TestGatewayDevice(t *testing.T) {
	hl := newHostLab(t)
	hl.mustIn(hl.host, "nft add table ip filter")
	hl.mustIn(hl.host, "nft add chain ip filter FORWARD { type filter hook forward priority 0 ; policy drop ; }")
	hl.resolvConf(hl.device, hrHostLAN)
	base := hl.snapshot()
	run := hl.startRun("--gateway", "lan0")
	if !strings.Contains(run.out.String(), "set gateway 192.168.50.1 and DNS server 192.168.50.1") {
		t.Errorf("no word on what to set on the devices:\n%s", run.out.String())
	}
	web4 := netip.AddrPortFrom(hrWeb4, 80)
	out, err := hl.curl(hl.device, "http://web.test/")
	if err != nil || !strings.HasPrefix(out, "hello from "+web4.String()) {
		t.Fatalf("curl http://web.test/ from the device: %q %v", out, err)
	}
	if n := hl.socksRequests("web.test:80", 1); n != 1 {
		t.Errorf("SOCKS server logged %d requests for web.test:80, want 1", n)
	}
	// The device's flow is tagged as the gateway's (IN-TYPE gateway,
	// IN-NAME lan0), not as the TUN's.
	tagged := false
	for _, l := range strings.Split(run.out.String(), "\n") {
		if strings.Contains(l, "msg=decision") && strings.Contains(l, "host=web.test") {
			if !strings.Contains(l, "in=lan0") || !strings.Contains(l, "src="+hrDevice.String()+":") {
				t.Errorf("the device's flow: %s\nwant in=lan0 and src=%s", l, hrDevice)
			}
			tagged = true
		}
	}
	if !tagged {
		t.Error("no decision logged for the device's flow to web.test")
	}
	if got := hl.requestsTo(web4); len(got) != 1 || got[0] == hrHostUp.String() || got[0] == hrDevice.String() {
		t.Errorf("web server saw %v, want one request from the SOCKS server", got)
	}
	if leaked := append(hl.dnsmasqSawFrom(hrHostUp), hl.dnsmasqSawFrom(hrDevice)...); len(leaked) > 0 {
		t.Errorf("wan's resolver saw the device's query:\n%s", strings.Join(leaked, "\n"))
	}
	// The host itself is not captured in gateway mode alone.
	if out, err := hl.curl(hl.host, "http://"+web4.String()+"/"); err != nil || !strings.Contains(out, "you are "+hrHostUp.String()) {
		t.Errorf("the host's own request in gateway mode: %q %v, want direct", out, err)
	}
	hl.stopRun(run)
	hl.sameAsBefore(base, "after exit")
}

// testCgroup makes a cgroup v2 for the test and removes it afterwards.
func testCgroup(t *testing.T) string {
	t.Helper()
	mnt := ""
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) > 9 && slices.Contains(f, "cgroup2") {
				mnt = f[4]
			}
		}
	}
	if mnt == "" {
		testenv.Unavailable(t, "no cgroup v2 hierarchy is mounted")
	}
	dir := filepath.Join(mnt, fmt.Sprintf("hr-%d-%s", os.Getpid(), strings.ToLower(t.Name())))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for range 50 {
			if err := os.Remove(dir); err == nil || os.IsNotExist(err) {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("cgroup %s could not be removed", dir)
	})
	return dir
}

// TestAutoRouteV4OnlyTunAddr: with only an IPv4 --tun-addr, the TUN still
// gets an IPv6 address and IPv6 is captured (proxied), not leaked.
func TestAutoRouteV4OnlyTunAddr(t *testing.T) {
	hl := newHostLab(t)
	run := hl.startRun("--auto-route", "--tun-addr", "198.18.0.1/15")
	web6 := netip.AddrPortFrom(hrWeb6, 80)
	if out, err := hl.curl(hl.host, "http://["+hrWeb6.String()+"]/"); err != nil || !strings.HasPrefix(out, "hello from "+web6.String()) || strings.Contains(out, "you are 2001:db8:1::2") {
		t.Errorf("IPv6 with a v4-only --tun-addr: %q %v, want it proxied", out, err)
	}
	if n := hl.socksRequests(web6.String(), 1); n != 1 {
		t.Errorf("SOCKS server logged %d requests for %s, want 1", n, web6)
	}
	hl.stopRun(run)
}
