package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
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

	"github.com/tunsocks/tunsocks/internal/direct"
	"github.com/tunsocks/tunsocks/internal/lab"
	"github.com/tunsocks/tunsocks/internal/testenv"
)

var binary string // the tunsocks binary built by TestMain

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			fmt.Fprintln(os.Stderr, "e2e: needs root (TUN, network namespaces) and CI=true: failing")
			os.Exit(1)
		}
		fmt.Fprintln(os.Stderr, "e2e: SKIPPING every end-to-end test: needs root (run ./scripts/test.sh)")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "tunsocks-e2e")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "tunsocks")
	// The README's build.
	build := exec.Command("go", "build", "-tags", "urfave_cli_no_docs", "-o", binary, "../cmd/tunsocks")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := build.CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: building tunsocks: %v\n%s", err, out)
		os.Exit(1)
	}
	lab.CleanupStale()
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is one lab with remote services, an upstream SOCKS server and tunsocks.
type env struct {
	t      *testing.T
	lab    *lab.Lab
	app    *direct.Dialer // sockets in the app host: they go through the TUN
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	upstream *proc
	tunsocks *proc
}

// proc is a process started in a namespace, with its output kept.
type proc struct {
	cmd  *exec.Cmd
	out  *testenv.Buffer
	done chan struct{}
}

func (e *env) start(ns string, name string, args ...string) *proc {
	e.t.Helper()
	p := &proc{out: &testenv.Buffer{}, done: make(chan struct{})}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	// Its own process group, so stop and kill reach every child (danted
	// forks workers that would otherwise keep relaying).
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		e.t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	e.t.Cleanup(func() { p.stop() })
	return p
}

// stop sends SIGTERM, then SIGKILL after 5 s.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL) // stragglers of the group
}

func (p *proc) kill() {
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// upstreamKind selects the SOCKS server on the proxy host.
type upstreamKind string

const (
	ourServer upstreamKind = "tunsocks"
	dante     upstreamKind = "dante"
)

var socksAddr = netip.AddrPortFrom(lab.ProxyDown4.Addr(), 1080)

func newEnv(t *testing.T, kind upstreamKind, runArgs ...string) *env {
	t.Helper()
	return newEnvSetup(t, kind, nil, runArgs...)
}

// newLabEnv creates a lab with the remote host's services running and
// nothing else: no upstream, no tunsocks (see newBareEnv for the end).
func newLabEnv(t *testing.T) *env {
	t.Helper()
	e := newBareEnv(t)
	if err := e.lab.Do(e.lab.Remote, e.startRemoteServices); err != nil {
		t.Fatal(err)
	}
	return e
}

// newBareEnv creates a lab and an env on it, and starts nothing. When the
// test ends (its cleanup is registered first, so it runs after those of
// what the test starts later) it stops e.tunsocks and e.upstream when set,
// waits for every process the env started, removes the lab and, on
// failure, dumps the logs of e.tunsocks and e.upstream.
func newBareEnv(t *testing.T) *env {
	t.Helper()
	l, err := lab.New(lab.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &env{t: t, lab: l, app: &direct.Dialer{Netns: l.App, Timeout: 10 * time.Second}, ctx: ctx, cancel: cancel}
	t.Cleanup(func() {
		cancel()
		e.mu.Lock()
		for _, p := range []*proc{e.tunsocks, e.upstream} {
			if p != nil {
				p.stop()
			}
		}
		e.mu.Unlock()
		e.wg.Wait()
		if err := l.Close(); err != nil {
			t.Errorf("removing the lab: %v", err)
		}
		if t.Failed() {
			e.dumpLogs()
		}
	})
	return e
}

// newEnvSetup is newEnv with setup run on the lab before tunsocks starts.
func newEnvSetup(t *testing.T, kind upstreamKind, setup func(l *lab.Lab) error, runArgs ...string) *env {
	t.Helper()
	e := newLabEnv(t)
	l := e.lab
	e.startUpstream(kind)
	if setup != nil {
		if err := setup(l); err != nil {
			t.Fatal(err)
		}
	}
	args := append([]string{"--log-level", "debug", "run", "--proxy", "socks5://" + socksAddr.String(), "--tun", "tsk0", "--summary-interval", "0"}, runArgs...)
	e.mu.Lock()
	e.tunsocks = e.start(l.App, binary, args...)
	e.mu.Unlock()
	if err := l.RouteDefaultVia("tsk0", 15*time.Second); err != nil {
		t.Fatalf("%v\ntunsocks output:\n%s", err, e.tunsocks.out.String())
	}
	return e
}

func (e *env) dumpLogs() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for name, p := range map[string]*proc{"tunsocks": e.tunsocks, "upstream": e.upstream} {
		if p != nil {
			out := p.out.String()
			if len(out) > 20000 {
				out = "...\n" + out[len(out)-20000:]
			}
			e.t.Logf("---- %s output ----\n%s", name, out)
		}
	}
}

// startUpstream starts (or restarts) the SOCKS server on the proxy host and
// waits until it accepts connections.
func (e *env) startUpstream(kind upstreamKind) {
	e.t.Helper()
	var p *proc
	switch kind {
	case ourServer:
		p = e.start(e.lab.Proxy, binary, "server", "--listen", socksAddr.String(), "--open")
	case dante:
		danted := testenv.NeedTool(e.t, "danted", "dante-server")
		conf := filepath.Join(e.t.TempDir(), "danted.conf")
		os.WriteFile(conf, []byte(fmt.Sprintf(`logoutput: stderr
internal: %s port = %d
external: up0
socksmethod: none
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass { from: 0.0.0.0/0 to: 0.0.0.0/0 }
socks pass { from: 0.0.0.0/0 to: 0.0.0.0/0 command: connect udpassociate bind udpreply }
socks pass { from: 0.0.0.0/0 to: ::/0 command: connect udpassociate bind udpreply }
socks pass { from: ::/0 to: 0.0.0.0/0 command: udpreply }
socks pass { from: ::/0 to: ::/0 command: connect udpassociate bind udpreply }
`, socksAddr.Addr(), socksAddr.Port())), 0o644)
		p = e.start(e.lab.Proxy, danted, "-f", conf, "-N", "1")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := e.app.DialContext(e.ctx, "tcp", socksAddr.String())
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("upstream %s did not start: %v\n%s", kind, err, p.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.mu.Lock()
	e.upstream = p
	e.mu.Unlock()
}

// Remote services.
const (
	httpPort   = 80
	echoPort   = 7    // UDP and TCP echo
	sinkPort   = 9000 // reads to EOF, answers the SHA-256 of what it read
	sourcePort = 9001 // sends N bytes (N read as a decimal line), then closes
	closedPort = 9    // nobody listens
)

func (e *env) startRemoteServices() error {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from remote, you are %s\n", r.RemoteAddr)
	})
	for _, ip := range []netip.Addr{lab.Remote4.Addr(), lab.Remote6.Addr()} {
		ln, err := net.Listen("tcp", netip.AddrPortFrom(ip, httpPort).String())
		if err != nil {
			return err
		}
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		e.serve(ln, nil, hs)
		for port, h := range map[uint16]func(net.Conn){echoPort: echoConn, sinkPort: sinkConn, sourcePort: sourceConn} {
			ln, err := net.Listen("tcp", netip.AddrPortFrom(ip, port).String())
			if err != nil {
				return err
			}
			e.serve(ln, h, nil)
		}
		pc, err := net.ListenPacket("udp", netip.AddrPortFrom(ip, echoPort).String())
		if err != nil {
			return err
		}
		e.wg.Add(2)
		go func() { defer e.wg.Done(); lab.EchoUDP(pc) }()
		go func() { defer e.wg.Done(); <-e.ctx.Done(); pc.Close() }()
	}
	return nil
}

func (e *env) serve(ln net.Listener, h func(net.Conn), hs *http.Server) {
	e.wg.Add(2)
	go func() {
		defer e.wg.Done()
		<-e.ctx.Done()
		ln.Close()
		if hs != nil {
			hs.Close()
		}
	}()
	go func() {
		defer e.wg.Done()
		if hs != nil {
			hs.Serve(ln)
			return
		}
		var conns sync.WaitGroup
		defer conns.Wait()
		for {
			c, err := ln.Accept()
			if err != nil {
				if e.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
					return
				}
				// Out of descriptors (EMFILE) or the like: say so and
				// keep serving, rather than stop accepting unseen and
				// leave later connections hanging.
				e.t.Logf("remote service on %v: accept: %v", ln.Addr(), err)
				time.Sleep(50 * time.Millisecond)
				continue
			}
			conns.Add(1)
			stop := context.AfterFunc(e.ctx, func() { c.Close() }) // never outlive the test
			go func() { defer conns.Done(); defer stop(); defer c.Close(); h(c) }()
		}
	}()
}

// echoConn echoes c. Through a buffer of its own, not io.Copy: a TCP
// socket copied to itself splices through a pipe, and a blocked splice
// holds its pipe's two descriptors, so each idle echo connection cost this
// process three descriptors instead of one (TestMaxMemory holds thousands,
// and with the app's ends it ran out of this machine's 20,000 at the
// 4,995th connection, whose echo then never came).
func echoConn(c net.Conn) {
	buf := make([]byte, 8<<10)
	io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, buf)
}

func sinkConn(c net.Conn) {
	h := newHash()
	io.Copy(h, c)
	fmt.Fprintf(c, "%x\n", h.Sum(nil))
}

func sourceConn(c net.Conn) {
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return
	}
	n, err := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
	if err != nil {
		return
	}
	io.Copy(c, io.LimitReader(newStream(), n))
}

// inApp runs a command in the app host and returns its combined output.
func (e *env) inApp(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(e.ctx, timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", e.lab.App, name}, args...)...).CombinedOutput()
	return string(out), err
}
