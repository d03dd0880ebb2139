package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/lab"
	"github.com/tunsocks/tunsocks/internal/testenv"
)

var (
	remote4 = lab.Remote4.Addr()
	remote6 = lab.Remote6.Addr()
)

func TestPipelineOurServer(t *testing.T) {
	e := suite(t, ourServer)
	t.Run("netstack-terminates-tcp", func(t *testing.T) { e.kernelTerminates(t, false) })
}
func TestPipelineDante(t *testing.T) { suite(t, dante) }

// TestPipelineSystemStack runs the suite with the kernel terminating the
// app's TCP (--tcp-stack system) instead of gVisor.
func TestPipelineSystemStack(t *testing.T) {
	e := suite(t, ourServer, "--tcp-stack", "system")
	t.Run("kernel-terminates-tcp", func(t *testing.T) { e.kernelTerminates(t, true) })
}

// TestSystemStackFirewallFallback: the app host's firewall drops new TCP
// connections arriving on the TUN, which is where the system stack's
// translated SYNs arrive. tunsocks' self-test sees it, says so, and TCP
// goes through gVisor instead of failing.
func TestSystemStackFirewallFallback(t *testing.T) {
	nft := testenv.NeedTool(t, "nft", "nftables")
	e := newEnvSetup(t, ourServer, func(l *lab.Lab) error {
		cmd := exec.Command("ip", "netns", "exec", l.App, nft, "-f", "-")
		cmd.Stdin = strings.NewReader(`table inet tsktest {
	chain input {
		type filter hook input priority 0; policy accept;
		iifname "tsk0" tcp flags & (syn | ack) == syn drop
	}
}
`)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("nft: %v\n%s", err, out)
		}
		return nil
	}, "--tcp-stack", "system")
	e.curl(t, "http://"+remote4.String()+"/")
	e.echoTCP(t, netip.AddrPortFrom(remote6, echoPort))
	e.kernelTerminates(t, false)
	e.mu.Lock()
	out := e.tunsocks.out.String()
	e.mu.Unlock()
	if !strings.Contains(out, "the kernel does not take connections arriving on the TUN") {
		t.Errorf("no warning about the failed self-test in tunsocks' output:\n%s", out)
	}
}

// kernelTerminates checks, with a connection open, whether the app host's
// kernel holds the accepted end of it: a socket from the TUN's address to a
// fake peer (198.18.0.2-255), as --tcp-stack system makes and gVisor never
// does.
func (e *env) kernelTerminates(t *testing.T, want bool) {
	c, err := e.app.DialContext(e.ctx, "tcp", netip.AddrPortFrom(remote4, echoPort).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	var table []byte
	if err := e.lab.Do(e.lab.App, func() (err error) {
		table, err = os.ReadFile("/proc/thread-self/net/tcp")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, line := range strings.Split(string(table), "\n")[1:] {
		f := strings.Fields(line)
		// local_address rem_address st, IPv4 in little-endian hex:
		// 198.18.0.1 is 010012C6, a fake peer xx0012C6; 01 is ESTABLISHED.
		if len(f) > 3 && strings.HasPrefix(f[1], "010012C6:") && strings.HasSuffix(f[2][:8], "0012C6") && f[2][:2] != "01" && f[3] == "01" {
			found = true
		}
	}
	if found != want {
		t.Errorf("kernel socket from the TUN address to a fake peer: found %v, want %v\n%s", found, want, table)
	}
}

func suite(t *testing.T, kind upstreamKind, runArgs ...string) *env {
	e := newEnv(t, kind, runArgs...)
	t.Run("curl-http-ipv4", func(t *testing.T) { e.curl(t, "http://"+remote4.String()+"/") })
	t.Run("curl-http-ipv6", func(t *testing.T) { e.curl(t, "http://["+remote6.String()+"]/") })
	t.Run("ipv6-target-through-socks5", func(t *testing.T) { e.echoTCP(t, netip.AddrPortFrom(remote6, echoPort)) })
	t.Run("udp-echo-ipv4", func(t *testing.T) { e.udpEcho(t, netip.AddrPortFrom(remote4, echoPort)) })
	t.Run("udp-echo-ipv6", func(t *testing.T) { e.udpEcho(t, netip.AddrPortFrom(remote6, echoPort)) })
	t.Run("dns-over-udp", func(t *testing.T) { e.dig(t) })
	t.Run("ping", func(t *testing.T) { e.ping(t) })
	t.Run("refused", func(t *testing.T) { e.refused(t) })
	t.Run("transfer-256MiB-each-way", func(t *testing.T) { e.transfer(t, 256<<20) })
	t.Run("transfer-32MiB-each-way-ipv6", func(t *testing.T) { e.transferTo(t, remote6, 32<<20) })
	t.Run("500-concurrent", func(t *testing.T) { e.concurrent(t, 500) })
	t.Run("upstream-killed-and-back", func(t *testing.T) { e.upstreamKilled(t, kind) })
	return e
}

func (e *env) curl(t *testing.T, url string) {
	testenv.NeedTool(t, "curl", "curl")
	out, err := e.inApp(20*time.Second, "curl", "-sS", "--max-time", "10", url)
	if err != nil || !strings.Contains(out, "hello from remote") {
		t.Fatalf("curl %s: %v\n%s", url, err, out)
	}
	// The remote host sees the SOCKS server (proxy host), never the app.
	if !strings.Contains(out, lab.ProxyUp4.Addr().String()) && !strings.Contains(out, lab.ProxyUp6.Addr().String()) {
		t.Fatalf("remote saw %q, want the proxy host's address", out)
	}
}

func (e *env) echoTCP(t *testing.T, dst netip.AddrPort) {
	c, err := e.app.DialContext(e.ctx, "tcp", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "hello %s\n", dst)
	c.(*net.TCPConn).CloseWrite() // half-close travels through, the echo still comes back
	b, err := io.ReadAll(c)
	if err != nil || string(b) != fmt.Sprintf("hello %s\n", dst) {
		t.Fatalf("echo via %s: %q, %v", dst, b, err)
	}
}

func (e *env) udpEcho(t *testing.T, dst netip.AddrPort) {
	c, err := e.app.DialContext(e.ctx, "udp", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 2048)
	for try := 0; try < 5; try++ {
		msg := fmt.Sprintf("datagram %d to %s", try, dst)
		c.Write([]byte(msg))
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := c.Read(buf)
		if err == nil {
			if string(buf[:n]) != msg {
				t.Fatalf("echo %q, want %q", buf[:n], msg)
			}
			// The reply's source is the remote, not the proxy's relay.
			if got := c.RemoteAddr().String(); got != dst.String() {
				t.Fatalf("reply source %s", got)
			}
			return
		}
	}
	t.Fatalf("no UDP echo from %s after 5 tries", dst)
}

func (e *env) dig(t *testing.T) {
	dnsmasq := testenv.NeedTool(t, "dnsmasq", "dnsmasq-base")
	testenv.NeedTool(t, "dig", "dnsutils")
	log := filepath.Join(t.TempDir(), "dnsmasq.log")
	p := e.start(e.lab.Remote, dnsmasq, "--no-daemon", "--port=53", "--listen-address="+remote4.String(), "--bind-interfaces",
		"--no-resolv", "--no-hosts", "--address=/example.lab/"+remote4.String(), "--log-queries", "--log-facility="+log,
		"--pid-file=", "--user=root")
	defer p.stop()
	var out string
	var err error
	for try := 0; try < 20; try++ { // dnsmasq needs a moment to bind
		out, err = e.inApp(10*time.Second, "dig", "+short", "+tries=1", "+time=2", "@"+remote4.String(), "www.example.lab", "A")
		if err == nil && strings.TrimSpace(out) == remote4.String() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("dig through the TUN: %v\n%s\ndnsmasq: %s", err, out, p.out.String())
}

func (e *env) ping(t *testing.T) {
	testenv.NeedTool(t, "ping", "iputils-ping")
	out, err := e.inApp(15*time.Second, "ping", "-c", "2", "-W", "2", remote4.String())
	if err != nil || !strings.Contains(out, " 0% packet loss") {
		t.Fatalf("ping through the TUN: %v\n%s", err, out)
	}
}

func (e *env) refused(t *testing.T) {
	start := time.Now()
	c, err := e.app.DialContext(e.ctx, "tcp", netip.AddrPortFrom(remote4, closedPort).String())
	if err == nil {
		c.Close()
		t.Fatal("connected to a port nobody listens on")
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial a closed port through tunsocks: %v, want connection refused", err)
	}
	t.Logf("refused after %v", time.Since(start))
}

// transfer sends n bytes up (the remote answers their SHA-256) and pulls n
// bytes down (checked against the same deterministic stream), concurrently,
// to the remote's IPv4 address.
func (e *env) transfer(t *testing.T, n int64) { e.transferTo(t, remote4, n) }

// transferTo is transfer to the remote address ip. Uploads leave the app's
// TCP as TSO segments of up to 64 KiB, which the gVisor stack takes whole.
func (e *env) transferTo(t *testing.T, ip netip.Addr, n int64) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		c, err := e.app.DialContext(e.ctx, "tcp", netip.AddrPortFrom(ip, sinkPort).String())
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Minute))
		h := newHash()
		if _, err := io.Copy(c, io.TeeReader(io.LimitReader(newStream(), n), h)); err != nil {
			t.Errorf("upload: %v", err)
			return
		}
		c.(*net.TCPConn).CloseWrite()
		line, err := bufio.NewReader(c).ReadString('\n')
		if want := fmt.Sprintf("%x\n", h.Sum(nil)); err != nil || line != want {
			t.Errorf("upload of %d bytes: remote SHA-256 %q (%v), want %q", n, line, err, want)
		}
	}()
	go func() {
		defer wg.Done()
		c, err := e.app.DialContext(e.ctx, "tcp", netip.AddrPortFrom(ip, sourcePort).String())
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Minute))
		fmt.Fprintf(c, "%d\n", n)
		got, want := newHash(), newHash()
		m, err := io.Copy(got, c)
		io.Copy(want, io.LimitReader(newStream(), n))
		if err != nil || m != n || string(got.Sum(nil)) != string(want.Sum(nil)) {
			t.Errorf("download: %d of %d bytes, %v, hash match %v", m, n, err, string(got.Sum(nil)) == string(want.Sum(nil)))
		}
	}()
	wg.Wait()
}

func (e *env) concurrent(t *testing.T, n int) {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(e.ctx, 60*time.Second)
			defer cancel()
			c, err := e.app.DialContext(ctx, "tcp", netip.AddrPortFrom(remote4, echoPort).String())
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(60 * time.Second))
			msg := "conn " + strconv.Itoa(i) + "\n"
			if _, err := io.WriteString(c, msg); err != nil {
				errs <- err
				return
			}
			got, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || got != msg {
				errs <- fmt.Errorf("conn %d: %q %v", i, got, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		if failed < 5 {
			t.Error(err)
		}
		failed++
	}
	if failed > 0 {
		t.Fatalf("%d of %d concurrent connections failed", failed, n)
	}
}

// upstreamKilled: a flow in the middle of a transfer fails promptly when the
// SOCKS server dies, and new flows work as soon as it is back.
func (e *env) upstreamKilled(t *testing.T, kind upstreamKind) {
	c, err := e.app.DialContext(e.ctx, "tcp", netip.AddrPortFrom(remote4, sourcePort).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "%d\n", int64(1)<<40) // endless for this test
	buf := make([]byte, 64<<10)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("transfer did not start: %v", err)
	}
	e.mu.Lock()
	up := e.upstream
	e.mu.Unlock()
	up.kill()
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue
		}
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("the flow kept hanging after its upstream died")
		}
		break // EOF or reset: it failed, as it must
	}
	// A new flow while the upstream is down is refused at once.
	if c2, err := e.app.DialContext(e.ctx, "tcp", netip.AddrPortFrom(remote4, echoPort).String()); err == nil {
		c2.Close()
		t.Fatal("a new flow succeeded with the upstream down")
	}
	e.startUpstream(kind)
	e.echoTCP(t, netip.AddrPortFrom(remote4, echoPort))
}

func TestPcap(t *testing.T) {
	t.Run("gvisor", func(t *testing.T) { testPcap(t) })
	// The system stack's translated leg (listener <-> fake peers) is
	// not the app's traffic and must not be in the capture.
	t.Run("system", func(t *testing.T) { testPcap(t, "--tcp-stack", "system") })
}

func testPcap(t *testing.T, runArgs ...string) {
	tshark := testenv.NeedTool(t, "tshark", "tshark")
	pcap := filepath.Join(t.TempDir(), "flows.pcap")
	e := newEnv(t, ourServer, append([]string{"--pcap", pcap}, runArgs...)...)
	e.echoTCP(t, netip.AddrPortFrom(remote4, echoPort))
	e.udpEcho(t, netip.AddrPortFrom(remote4, echoPort))
	e.mu.Lock()
	e.tunsocks.stop() // flushes the pcap on exit
	e.mu.Unlock()
	out, err := exec.Command(tshark, "-r", pcap, "-T", "fields", "-e", "ip.dst", "-e", "tcp.dstport", "-e", "udp.dstport").CombinedOutput()
	if err != nil {
		t.Fatalf("tshark: %v\n%s", err, out)
	}
	s := string(out)
	if !strings.Contains(s, remote4.String()+"\t7\t") || !strings.Contains(s, remote4.String()+"\t\t7") {
		t.Fatalf("tshark did not find the TCP and UDP flows to %s:7 in the pcap:\n%s", remote4, s)
	}
	// Every TCP packet is between the app and the remote, both ways.
	out, err = exec.Command(tshark, "-r", pcap, "-Y", "tcp", "-T", "fields", "-e", "ip.src", "-e", "ip.dst").Output()
	if err != nil {
		t.Fatalf("tshark: %v", err)
	}
	app := "198.18.0.1"
	n := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		n++
		if line != app+"\t"+remote4.String() && line != remote4.String()+"\t"+app {
			t.Errorf("TCP packet %q in the capture is not between the app and the remote", line)
		}
	}
	if n < 6 {
		t.Errorf("only %d TCP packets captured:\n%s", n, out)
	}
}

// TestTunDeletedUnderRun: someone deletes tunsocks' TUN interface; tunsocks
// says so and exits 1 instead of running on with no device.
func TestTunDeletedUnderRun(t *testing.T) {
	e := newEnv(t, ourServer)
	e.echoTCP(t, netip.AddrPortFrom(remote4, echoPort))
	if out, err := exec.Command("ip", "-n", e.lab.App, "link", "del", "tsk0").CombinedOutput(); err != nil {
		t.Fatalf("ip link del: %v\n%s", err, out)
	}
	e.mu.Lock()
	p := e.tunsocks
	e.mu.Unlock()
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("tunsocks still running 15 s after its TUN was deleted:\n%s", p.out.String())
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	if out := p.out.String(); !strings.Contains(out, "TUN device tsk0 stopped working") {
		t.Errorf("no clear message about the lost device in:\n%s", out)
	}
}
