package sandbox

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/procinfo"
	"github.com/tunsocks/tunsocks/stack"
	"github.com/tunsocks/tunsocks/tun"
)

// The test binary is also the sandbox's init (re-executed as
// /proc/self/exe) and, for the tests that must kill or demote the process
// serving a sandbox, that process (helperEnv=serve).
const helperEnv = "TUNSOCKS_SANDBOX_TEST_HELPER"

func TestMain(m *testing.M) {
	if IsInit(os.Args) {
		os.Exit(RunInit())
	}
	switch os.Getenv(helperEnv) {
	case "":
	case "serve":
		os.Exit(helperServe(os.Args[1:]))
	case "rootless":
		os.Exit(helperRootless(os.Args[1:]))
	case "count":
		os.Exit(helperCount())
	default:
		fmt.Fprintln(os.Stderr, "unknown helper", os.Getenv(helperEnv))
		os.Exit(2)
	}
	// Every sandbox, stack and reader a test starts is gone when it ends.
	goleak.VerifyTestMain(m)
}

const tunName = "tsbtest0"

var (
	tunAddrs = []netip.Prefix{netip.MustParsePrefix("198.18.0.1/15"), netip.MustParsePrefix("fc00::1/18")}
	dnsAddr  = netip.MustParseAddr("198.18.0.2")
)

func baseSpec(args ...string) Spec {
	return Spec{
		Args:       args,
		Env:        []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
		Dir:        "/",
		Tun:        TunSpec{Name: tunName, Addrs: tunAddrs, MTU: 1500, Offload: true},
		ResolvConf: ResolvConf(dnsAddr),
		Mask:       DefaultMask,
	}
}

// testHandler answers every TCP connection like an HTTP server whose body
// names the destination, echoes UDP, and remembers what it saw.
type testHandler struct {
	finder *procinfo.Finder // when set, each TCP flow's process is looked up

	mu    sync.Mutex
	dsts  []string
	procs []string
}

func (h *testHandler) HandleTCP(ctx context.Context, r *stack.TCPRequest) {
	if h.finder != nil {
		path, _, err := h.finder.LookupFlow("tcp", r.Src(), r.Dst())
		h.mu.Lock()
		if err != nil {
			h.procs = append(h.procs, "error: "+err.Error())
		} else {
			h.procs = append(h.procs, path)
		}
		h.mu.Unlock()
	}
	c, err := r.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	h.mu.Lock()
	h.dsts = append(h.dsts, "tcp "+r.Dst().String())
	h.mu.Unlock()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	for {
		l, err := br.ReadString('\n')
		if err != nil || strings.TrimSpace(l) == "" {
			break
		}
	}
	body := "dst=" + r.Dst().String() + "\n"
	fmt.Fprintf(c, "HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
}

func (h *testHandler) HandleUDP(ctx context.Context, f *stack.UDPFlow) {
	defer f.Close()
	buf := make([]byte, 2048)
	for {
		f.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, dst, err := f.ReadFrom(buf)
		if err != nil {
			return
		}
		h.mu.Lock()
		h.dsts = append(h.dsts, "udp "+dst.String())
		h.mu.Unlock()
		f.WriteTo(append([]byte("echo "), buf[:n]...), dst)
	}
}

func (h *testHandler) seen() ([]string, []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.dsts...), append([]string(nil), h.procs...)
}

// serve starts the sandbox of spec, serves its TUN with a netstack and h,
// and runs the command.
func serve(ctx context.Context, spec Spec, h stack.Handler) (*Sandbox, func(), error) {
	sb, err := Start(ctx, spec)
	if err != nil {
		return nil, nil, err
	}
	dev, err := tun.Open(ctx, tun.Config{FD: sb.TakeTUN()})
	if err != nil {
		sb.Close()
		return nil, nil, err
	}
	st, err := stack.New(ctx, stack.Config{Device: dev, MTU: 1500, Handler: h})
	if err != nil {
		sb.Close()
		return nil, nil, err
	}
	stop := func() {
		sb.Close()
		st.Close()
	}
	if err := sb.Run(); err != nil {
		stop()
		return nil, nil, err
	}
	return sb, stop, nil
}

// output is a pipe whose read end is collected; the write end goes to a
// sandbox as its stdout (and stderr).
type output struct {
	w    *os.File
	mu   sync.Mutex
	b    strings.Builder
	done chan struct{}
}

func newOutput(t *testing.T) *output {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	o := &output{w: w, done: make(chan struct{})}
	go func() {
		defer close(o.done)
		defer r.Close()
		buf := make([]byte, 4096)
		for {
			n, err := r.Read(buf)
			o.mu.Lock()
			o.b.Write(buf[:n])
			o.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { w.Close() })
	return o
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}

// waitFor waits (bounded) until the output contains s.
func (o *output) waitFor(t *testing.T, s string) {
	t.Helper()
	for range 300 {
		if strings.Contains(o.String(), s) {
			return
		}
		select {
		case <-o.done:
			if strings.Contains(o.String(), s) {
				return
			}
			t.Fatalf("output ended without %q:\n%s", s, o.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("no %q in the output after 15s:\n%s", s, o.String())
}

// all waits (bounded) for the end of the output: every holder of the
// write end, the sandbox's whole process tree, is gone.
func (o *output) all(t *testing.T) string {
	t.Helper()
	o.w.Close()
	select {
	case <-o.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("output still open after 30s:\n%s", o.String())
	}
	return o.String()
}

// run runs spec's command in a sandbox served by h and returns its output
// and how it ended.
func run(t *testing.T, spec Spec, h stack.Handler) (string, Exit) {
	t.Helper()
	o := newOutput(t)
	spec.Stdout, spec.Stderr = o.w, o.w
	sb, stop, err := serve(t.Context(), spec, h)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	exit, err := sb.Wait()
	if err != nil {
		t.Fatal(err)
	}
	return o.all(t), exit
}

func needSandbox(t *testing.T) {
	t.Helper()
	testenv.NeedRoot(t, "network namespaces and a TUN device")
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		testenv.Unavailable(t, "no /dev/net/tun")
	}
	testenv.NeedTool(t, "ip", "iproute2")
}

// section returns the part of out between the n-th and n+1-th "---" line.
func section(out string, n int) string {
	parts := strings.Split(out, "---\n")
	if n >= len(parts) {
		return ""
	}
	return parts[n]
}

// hostMountsMention lists the host's mounts whose mount point contains s.
func hostMountsMention(t *testing.T, s string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.Contains(f[4], s) {
			out = append(out, l)
		}
	}
	return out
}

// TestInsideView runs a command that reports what it sees: only lo and
// the TUN, default routes through the TUN, the generated resolv.conf, no
// capabilities, no_new_privs, a PID namespace of its own. Nothing of it
// shows on the host.
func TestInsideView(t *testing.T) {
	needSandbox(t)
	before := len(hostMountsMention(t, "resolv.conf"))
	spec := baseSpec("sh", "-c", `ip -br link | awk '{print $1}'; echo ---; cat /etc/resolv.conf; echo ---
ip -4 route; ip -6 route | grep default; echo ---
grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status; echo ---
tr '\0' ' ' </proc/1/cmdline; echo; id -u; echo ---; ip -br addr show dev `+tunName+`; ip link show dev `+tunName+` | grep -o 'mtu [0-9]*'`)
	out, exit := run(t, spec, &testHandler{})
	if exit.ExitCode() != 0 {
		t.Fatalf("exit %v:\n%s", exit, out)
	}
	if got := section(out, 0); got != "lo\n"+tunName+"\n" {
		t.Errorf("interfaces inside:\n%s\nwant only lo and %s", got, tunName)
	}
	if got := section(out, 1); got != spec.ResolvConf {
		t.Errorf("resolv.conf inside:\n%s\nwant:\n%s", got, spec.ResolvConf)
	}
	routes := section(out, 2)
	for _, want := range []string{"default dev " + tunName, "198.18.0.0/15 dev " + tunName} {
		if !strings.Contains(routes, want) {
			t.Errorf("routes inside lack %q:\n%s", want, routes)
		}
	}
	if !strings.Contains(routes, "default dev "+tunName) || strings.Count(routes, "default dev "+tunName) != 2 {
		t.Errorf("want an IPv4 and an IPv6 default route through %s:\n%s", tunName, routes)
	}
	caps := section(out, 3)
	for _, l := range strings.Split(strings.TrimSpace(caps), "\n") {
		f := strings.Fields(l)
		if len(f) != 2 {
			t.Fatalf("status line %q", l)
		}
		want := "0000000000000000"
		if f[0] == "NoNewPrivs:" {
			want = "1"
		}
		if f[1] != want {
			t.Errorf("%s %s inside, want %s", f[0], f[1], want)
		}
	}
	if got, want := section(out, 4), "tunsocks-sandbox "+InitArg+" \n0\n"; got != want {
		t.Errorf("PID 1 and uid inside: %q, want %q (the init is PID 1 of a PID namespace with its own /proc; the command runs as root)", got, want)
	}
	addr := section(out, 5)
	for _, want := range []string{"198.18.0.1/15", "fc00::1/18", "mtu 1500"} {
		if !strings.Contains(addr, want) {
			t.Errorf("TUN inside lacks %q:\n%s", want, addr)
		}
	}
	if after := hostMountsMention(t, "resolv.conf"); len(after) != before {
		t.Errorf("the host's mounts changed: %q", after)
	}
}

func TestExitStatus(t *testing.T) {
	needSandbox(t)
	for _, c := range []struct {
		script string
		want   Exit
		code   int
	}{
		{"exit 7", Exit{Code: 7}, 7},
		{"exit 0", Exit{}, 0},
		{"kill -TERM $$", Exit{Signal: syscall.SIGTERM}, 128 + 15},
	} {
		out, exit := run(t, baseSpec("sh", "-c", c.script), &testHandler{})
		if exit != c.want || exit.ExitCode() != c.code {
			t.Errorf("%q ended with %v (code %d), want %v (code %d); output:\n%s", c.script, exit, exit.ExitCode(), c.want, c.code, out)
		}
	}
}

// TestBackgroundChildrenEnd: the command's end is the sandbox's end; what it
// left running is killed with the PID namespace before Wait returns.
func TestBackgroundChildrenEnd(t *testing.T) {
	needSandbox(t)
	o := newOutput(t)
	spec := baseSpec("sh", "-c", "sleep 1000 & echo bg=$!; exit 5")
	spec.Stdout, spec.Stderr = o.w, o.w
	sb, stop, err := serve(t.Context(), spec, &testHandler{})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	exit, err := sb.Wait()
	if err != nil || exit.Code != 5 {
		t.Fatalf("Wait: %v %v", exit, err)
	}
	// The sleep held stdout too: the output ends only when it is gone.
	if out := o.all(t); !strings.Contains(out, "bg=") {
		t.Fatalf("output %q", out)
	}
	waitGone(t, sb.Pid())
}

func TestSignalReachesCommand(t *testing.T) {
	needSandbox(t)
	o := newOutput(t)
	spec := baseSpec("sh", "-c", `trap 'echo got-INT; exit 3' INT; echo ready; while :; do sleep 0.1; done`)
	spec.Stdout, spec.Stderr = o.w, o.w
	sb, stop, err := serve(t.Context(), spec, &testHandler{})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	o.waitFor(t, "ready")
	if err := sb.Forward(syscall.SIGINT); err != nil { // no terminal here: passed on
		t.Fatal(err)
	}
	exit, err := sb.Wait()
	if err != nil {
		t.Fatal(err)
	}
	out := o.all(t)
	if exit.Code != 3 || !strings.Contains(out, "got-INT") {
		t.Errorf("after SIGINT: %v, output:\n%s", exit, out)
	}
}

// TestTraffic: TCP over IPv4 and IPv6 and UDP from the command reach the
// handler in this process, and the process behind each TCP flow is found
// through the sandbox's sock_diag socket although the socket lives in
// another network namespace.
func TestTraffic(t *testing.T) {
	needSandbox(t)
	curl := testenv.NeedTool(t, "curl", "curl")
	testenv.NeedTool(t, "socat", "socat")
	o := newOutput(t)
	spec := baseSpec("sh", "-c", `curl -sS -m 10 http://192.0.2.1:8080/; curl -sS -m 10 'http://[2001:db8::1]/'
echo hi | socat -t 2 - UDP:192.0.2.9:7; echo`)
	spec.Stdout, spec.Stderr = o.w, o.w
	h := &testHandler{}
	sb, err := Start(t.Context(), spec)
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	h.finder = procinfo.NewFinderIn(0, sb.TakeSockDiag())
	defer h.finder.Close()
	dev, err := tun.Open(t.Context(), tun.Config{FD: sb.TakeTUN()})
	if err != nil {
		t.Fatal(err)
	}
	st, err := stack.New(t.Context(), stack.Config{Device: dev, MTU: 1500, Handler: h})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := sb.Run(); err != nil {
		t.Fatal(err)
	}
	exit, err := sb.Wait()
	if err != nil {
		t.Fatal(err)
	}
	out := o.all(t)
	if exit.Code != 0 {
		t.Fatalf("exit %v:\n%s", exit, out)
	}
	for _, want := range []string{"dst=192.0.2.1:8080\n", "dst=[2001:db8::1]:80\n", "echo hi\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	dsts, procs := h.seen()
	if len(dsts) != 3 {
		t.Errorf("handler saw %q", dsts)
	}
	real, _ := filepath.EvalSymlinks(curl)
	if len(procs) != 2 || procs[0] != real || procs[1] != real {
		t.Errorf("processes of the TCP flows: %q, want %s twice", procs, real)
	}
}

// TestResolverSocketsMasked: a Unix socket in a masked directory, reachable
// outside, cannot be reached (or even seen) inside.
func TestResolverSocketsMasked(t *testing.T) {
	needSandbox(t)
	testenv.NeedTool(t, "socat", "socat")
	dir := filepath.Join(t.TempDir(), "resolve")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "io.systemd.Resolve")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("resolved-here\n"))
			c.Close()
		}
	}()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("the socket is not reachable outside: %v", err)
	}
	c.Close()
	spec := baseSpec("sh", "-c", `socat -u UNIX-CONNECT:`+sock+` - ; echo rc=$?; ls -A `+dir+`; echo end`)
	spec.Mask = append([]string{dir}, DefaultMask...)
	out, _ := run(t, spec, &testHandler{})
	if strings.Contains(out, "resolved-here") || !strings.Contains(out, "rc=1") || !strings.Contains(out, "rc=1\nend\n") {
		t.Errorf("inside, the masked socket answered or the directory is not empty:\n%s", out)
	}
}

// TestResolvConfSymlink: /etc/resolv.conf reached through a symlink is
// replaced where the link leads, and a link into a masked directory (as
// systemd-resolved's stub-resolv.conf) gets a file in the mask.
func TestResolvConfSymlink(t *testing.T) {
	needSandbox(t)
	tmp := t.TempDir()
	realDir := filepath.Join(tmp, "real")
	masked := filepath.Join(tmp, "masked")
	for _, d := range []string{realDir, masked} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	const hostContent = "nameserver 10.9.9.9\n"
	target := filepath.Join(realDir, "resolv.conf")
	if err := os.WriteFile(target, []byte(hostContent), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(tmp, "resolv.conf")
	if err := os.Symlink("real/resolv.conf", link); err != nil {
		t.Fatal(err)
	}
	stubLink := filepath.Join(tmp, "stub.conf")
	if err := os.Symlink(filepath.Join(masked, "stub-resolv.conf"), stubLink); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(masked, "stub-resolv.conf"), []byte(hostContent), 0o644); err != nil {
		t.Fatal(err)
	}

	spec := baseSpec("sh", "-c", "cat "+link+"; echo ---; echo x >> "+target+" || echo read-only")
	spec.resolvPath = link
	out, _ := run(t, spec, &testHandler{})
	if got := section(out, 0); got != spec.ResolvConf {
		t.Errorf("through the symlink inside:\n%s\nwant:\n%s", got, spec.ResolvConf)
	}
	if !strings.Contains(section(out, 1), "read-only") {
		t.Errorf("the bound resolv.conf is writable inside:\n%s", out)
	}
	if b, _ := os.ReadFile(target); string(b) != hostContent {
		t.Errorf("the file outside changed: %q", b)
	}

	spec = baseSpec("cat", stubLink)
	spec.resolvPath = stubLink
	spec.Mask = []string{masked}
	if out, _ := run(t, spec, &testHandler{}); out != spec.ResolvConf {
		t.Errorf("through a symlink into a masked directory:\n%s\nwant:\n%s", out, spec.ResolvConf)
	}
	if b, _ := os.ReadFile(filepath.Join(masked, "stub-resolv.conf")); string(b) != hostContent {
		t.Errorf("the masked file outside changed: %q", b)
	}
}

// TestCred: root runs the command as another user, still without
// capabilities.
func TestCred(t *testing.T) {
	needSandbox(t)
	spec := baseSpec("sh", "-c", "id -u; id -g; id -G; grep -E '^Cap(Prm|Eff)' /proc/self/status")
	spec.Cred = &Cred{UID: 65534, GID: 65534, Groups: []uint32{65534, 100}}
	out, exit := run(t, spec, &testHandler{})
	want := "65534\n65534\n65534 100\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n"
	if exit.Code != 0 || out != want {
		t.Errorf("as uid 65534: %v\n%s\nwant:\n%s", exit, out, want)
	}
}

func TestCommandNotFound(t *testing.T) {
	needSandbox(t)
	_, err := Start(t.Context(), baseSpec("no-such-command-tunsocks"))
	if !errors.Is(err, exec.ErrNotFound) {
		t.Errorf("Start of a missing command: %v, want exec.ErrNotFound", err)
	}
	notExec := filepath.Join(t.TempDir(), "not-executable")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := baseSpec(notExec)
	spec.Path = notExec // past LookPath, which refuses it already
	sb, stop, err := serve(t.Context(), spec, &testHandler{})
	if err == nil {
		stop()
		t.Fatalf("Run of a file that is not executable succeeded (%v)", sb.Pid())
	}
	if !errors.Is(err, os.ErrPermission) {
		t.Errorf("Run of a file that is not executable: %v, want a permission error", err)
	}
}

// TestJoin: a second command joins a published sandbox: same network
// namespace, same TUN, its flows served by the same handler; it ends on
// its own, and the sandbox's socket goes with the sandbox.
func TestJoin(t *testing.T) {
	needSandbox(t)
	testenv.NeedTool(t, "curl", "curl")
	dir := t.TempDir()
	in, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer inW.Close()
	o := newOutput(t)
	spec := baseSpec("sh", "-c", "readlink /proc/self/ns/net; echo ready; read x; echo main-done")
	spec.Stdin, spec.Stdout, spec.Stderr = in, o.w, o.w
	h := &testHandler{}
	sb, stop, err := serve(t.Context(), spec, h)
	in.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	sock, err := sb.Publish(dir, "work")
	if err != nil {
		t.Fatal(err)
	}
	o.waitFor(t, "ready")

	jo := newOutput(t)
	j, err := Join(t.Context(), sock, JoinSpec{
		Args:   []string{"sh", "-c", "readlink /proc/self/ns/net; ip -br link | awk '{print $1}'; curl -sS -m 10 http://192.0.2.77/; exit 4"},
		Env:    []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
		Dir:    "/",
		Stdout: jo.w, Stderr: jo.w,
	})
	if err != nil {
		t.Fatal(err)
	}
	exit, err := j.Wait()
	j.Close()
	if err != nil || exit.Code != 4 {
		t.Fatalf("joined command: %v %v\n%s", exit, err, jo.all(t))
	}
	jout := jo.all(t)
	mainNS := strings.SplitN(o.String(), "\n", 2)[0]
	if !strings.HasPrefix(mainNS, "net:[") || !strings.HasPrefix(jout, mainNS+"\n") {
		t.Errorf("joined command in %q, the sandbox's command in %q", strings.SplitN(jout, "\n", 2)[0], mainNS)
	}
	if !strings.Contains(jout, "lo\n"+tunName+"\n") || !strings.Contains(jout, "dst=192.0.2.77:80") {
		t.Errorf("joined command's view and traffic:\n%s", jout)
	}
	if dsts, _ := h.seen(); len(dsts) != 1 || dsts[0] != "tcp 192.0.2.77:80" {
		t.Errorf("handler saw %q", dsts)
	}

	inW.Write([]byte("go\n"))
	if exit, err := sb.Wait(); err != nil || exit.Code != 0 {
		t.Fatalf("sandbox: %v %v", exit, err)
	}
	stop()
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket %s left after Close: %v", sock, err)
	}
	if _, err := os.Lstat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket directory %s left after Close: %v", dir, err)
	}
	if _, err := Join(t.Context(), sock, JoinSpec{Args: []string{"true"}}); err == nil {
		t.Error("joining an ended sandbox succeeded")
	}
}

// TestJoinRefusesOtherUsers: only the command's user and root may join.
func TestJoinRefusesOtherUsers(t *testing.T) {
	needSandbox(t)
	dir, err := os.MkdirTemp("", "tunsocks-join")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755) // uid 1 must reach the socket to be refused by it
	in, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer inW.Close()
	spec := baseSpec("sh", "-c", "read x")
	spec.Stdin = in
	spec.Cred = &Cred{UID: 65534, GID: 65534}
	sb, stop, err := serve(t.Context(), spec, &testHandler{})
	in.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	sock, err := sb.Publish(dir, "x")
	if err != nil {
		t.Fatal(err)
	}
	// uid 1 (daemon) is neither root nor 65534.
	cmd := exec.Command("/proc/self/exe", "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=serve")
	cmd.Args = []string{"sandbox.test", "join", sock}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1, Gid: 1}}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "uid 1 may not join this exec: only uid 65534 and root may") {
		t.Errorf("uid 1 joining: %v\n%s", err, out)
	}
}

// helperServe is a process serving one sandbox (as `tunsocks exec` does),
// for tests that kill it or run it as another user:
//
//	serve [-rootless] -- CMD ARGS...  run CMD; print init=PID on stderr
//	join SOCKET                       join SOCKET with `true`
func helperServe(args []string) int {
	if len(args) == 2 && args[0] == "join" {
		j, err := Join(context.Background(), args[1], JoinSpec{Args: []string{"true"}})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		j.Wait()
		return 0
	}
	rootless := false
	for len(args) > 0 && args[0] != "--" {
		if args[0] == "-rootless" {
			rootless = true
		}
		args = args[1:]
	}
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: serve [-rootless] -- CMD...")
		return 2
	}
	spec := baseSpec(args[1:]...)
	spec.Rootless = rootless
	spec.Stdin, spec.Stdout, spec.Stderr = os.Stdin, os.Stdout, os.Stderr
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGWINCH)
	sb, stop, err := serve(context.Background(), spec, &testHandler{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		var be *BlockedError
		if errors.As(err, &be) {
			return 3
		}
		return 1
	}
	defer stop()
	fmt.Fprintf(os.Stderr, "init=%d\n", sb.Pid())
	go func() {
		for s := range sigs {
			sb.Forward(s.(syscall.Signal))
		}
	}()
	exit, err := sb.Wait()
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	return exit.ExitCode()
}

// TestTerminalSignalsOnce: with a terminal, ^C and a window change reach
// the command once: the terminal signals the foreground process group,
// which the command shares with the process serving it, and that process
// does not pass the same signal on again.
func TestTerminalSignalsOnce(t *testing.T) {
	needSandbox(t)
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		testenv.Unavailable(t, "no /dev/ptmx: "+err.Error())
	}
	defer ptmx.Close()
	if err := unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/proc/self/exe", "-test.run=^$")
	// The command counts every signal it gets (a shell's trap would
	// merge two that come close together).
	cmd.Args = []string{"sandbox.test", "--", "env", helperEnv + "=count", self, "-test.run=^$"}
	cmd.Env = append(os.Environ(), helperEnv+"=serve")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = pts, pts, pts
	// A session of its own whose controlling terminal is the pty: the
	// helper's process group is its foreground group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pts.Close()
	defer cmd.Process.Kill()
	var mu sync.Mutex
	var out strings.Builder
	go func() {
		buf := make([]byte, 1024)
		for {
			n, err := ptmx.Read(buf)
			mu.Lock()
			out.Write(buf[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	seen := func(s string) bool {
		for range 300 {
			mu.Lock()
			ok := strings.Contains(out.String(), s)
			mu.Unlock()
			if ok {
				return true
			}
			time.Sleep(50 * time.Millisecond)
		}
		return false
	}
	if !seen("ready") {
		t.Fatalf("the command did not start:\n%s", out.String())
	}
	ptmx.Write([]byte{3}) // ^C
	if !seen("INT1") {
		t.Fatalf("^C did not reach the command:\n%s", out.String())
	}
	if err := unix.IoctlSetWinsize(int(ptmx.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 40, Col: 100}); err != nil {
		t.Fatal(err)
	}
	if !seen("end ") {
		t.Fatalf("the command did not end:\n%s", out.String())
	}
	cmd.Wait()
	mu.Lock()
	got := out.String()
	mu.Unlock()
	if !strings.Contains(got, "end INT=1 WINCH=1\r\n") {
		t.Errorf("want one SIGINT and one SIGWINCH, each once:\n%s", got)
	}
}

// TestServerKilled: SIGKILL of the process serving the sandbox takes the
// TUN with it: the command (which ignores the hangup) finds no route at
// once, its connect fails without waiting, and once it exits nothing is
// left.
func TestServerKilled(t *testing.T) {
	needSandbox(t)
	testenv.NeedTool(t, "curl", "curl")
	o := newOutput(t)
	errOut := &testenv.Buffer{}
	script := `trap 'echo hangup' HUP; echo ready
while ip link show ` + tunName + ` >/dev/null 2>&1; do sleep 0.05; done
ip route get 192.0.2.1 2>&1; curl -sS -m 20 http://192.0.2.1/ 2>/dev/null; echo curl=$?`
	cmd := exec.Command("/proc/self/exe", "-test.run=^$")
	cmd.Args = []string{"sandbox.test", "--", "sh", "-c", script}
	cmd.Env = append(os.Environ(), helperEnv+"=serve")
	cmd.Stdout, cmd.Stderr = o.w, errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	o.waitFor(t, "ready")
	initPid := 0
	for range 100 {
		if _, err := fmt.Sscanf(errOut.String(), "init=%d", &initPid); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if initPid == 0 {
		t.Fatalf("no init pid from the helper: %q", errOut.String())
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	out := o.all(t)
	if !strings.Contains(out, "Network is unreachable") || !strings.Contains(out, "curl=7\n") {
		t.Errorf("after the server died, want an unreachable network and curl failing to connect (7), not timing out (28):\n%s", out)
	}
	if !strings.Contains(out, "hangup") {
		t.Errorf("the command was not hung up:\n%s", out)
	}
	waitGone(t, initPid)
	if m := hostMountsMention(t, "resolv.conf"); len(m) > 0 {
		t.Errorf("mounts left on the host: %q", m)
	}
}

// helperCount counts the SIGINTs and SIGWINCHs it gets in 3 seconds.
func helperCount() int {
	c := make(chan os.Signal, 16)
	signal.Notify(c, syscall.SIGINT, syscall.SIGWINCH)
	fmt.Println("ready")
	ints, winchs := 0, 0
	end := time.After(3 * time.Second)
	for {
		select {
		case s := <-c:
			if s == syscall.SIGINT {
				ints++
				fmt.Printf("INT%d\n", ints)
			} else {
				winchs++
				fmt.Printf("WINCH%d\n", winchs)
			}
		case <-end:
			fmt.Printf("end INT=%d WINCH=%d\n", ints, winchs)
			return 0
		}
	}
}

// waitGone waits (bounded) until pid has exited: gone, or a zombie whose
// parent (the machine's init, for an orphan) has not reaped it yet, which
// holds nothing any more.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	for range 200 {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return
		}
		if f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:])); len(f) > 0 && f[0] == "Z" {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("process %d still runs after 10s", pid)
}

// helperRootless runs, as root in a mount namespace of its own, a serving
// helper as uid 65534 with /dev/net/tun opened to everyone there by a
// bind-mounted copy: the machine's own device node is never touched.
func helperRootless(args []string) int {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		fmt.Fprintln(os.Stderr, "private mounts:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "tunsocks-rootless")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.Remove(dir)
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "mode=0755,size=64k"); err != nil {
		fmt.Fprintln(os.Stderr, "tmpfs:", err)
		return 1
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)
	dev := filepath.Join(dir, "tun")
	if err := unix.Mknod(dev, unix.S_IFCHR|0o666, int(unix.Mkdev(10, 200))); err != nil {
		fmt.Fprintln(os.Stderr, "mknod:", err)
		return 1
	}
	if err := unix.Chmod(dev, 0o666); err != nil { // past the umask
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := unix.Mount(dev, "/dev/net/tun", "", unix.MS_BIND, ""); err != nil {
		fmt.Fprintln(os.Stderr, "bind /dev/net/tun:", err)
		return 1
	}
	cmd := exec.Command("/proc/self/exe", append([]string{"-rootless"}, args...)...)
	cmd.Args[0] = "sandbox.test"
	cmd.Env = []string{helperEnv + "=serve", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Dir = "/"
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// TestRootless builds the sandbox as an unprivileged user (uid 65534): a
// user namespace mapping only that uid, the TUN made inside and passed
// out; the command runs as 65534 with no capabilities, its traffic served
// by the unprivileged process.
func TestRootless(t *testing.T) {
	needSandbox(t)
	testenv.NeedTool(t, "curl", "curl")
	if b, err := os.ReadFile("/proc/sys/user/max_user_namespaces"); err == nil && strings.TrimSpace(string(b)) == "0" {
		testenv.Unavailable(t, "user namespaces are switched off (user.max_user_namespaces = 0)")
	}
	before, err := os.Stat("/dev/net/tun")
	if err != nil {
		t.Fatal(err)
	}
	script := `id -u; echo ---; ip -br link | awk '{print $1}'; echo ---; cat /etc/resolv.conf; echo ---
grep -E '^Cap(Prm|Eff|Bnd|Amb)' /proc/self/status; echo ---; curl -sS -m 10 http://192.0.2.5/; echo ---; tr '\0' ' ' </proc/1/cmdline`
	cmd := exec.Command("/proc/self/exe", "--", "sh", "-c", script)
	cmd.Args[0] = "sandbox.test"
	cmd.Env = append(os.Environ(), helperEnv+"=rootless")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWNS}
	stderr := &testenv.Buffer{}
	cmd.Stderr = stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("rootless sandbox: %v\n%s\n%s", err, out, stderr)
	}
	s := string(out)
	if got := section(s, 0); got != "65534\n" {
		t.Errorf("uid inside %q, want 65534\n%s", got, s)
	}
	if got := section(s, 1); got != "lo\n"+tunName+"\n" {
		t.Errorf("interfaces inside:\n%s", got)
	}
	if got := section(s, 2); got != ResolvConf(dnsAddr) {
		t.Errorf("resolv.conf inside:\n%s", got)
	}
	for _, l := range strings.Split(strings.TrimSpace(section(s, 3)), "\n") {
		if !strings.HasSuffix(l, "\t0000000000000000") {
			t.Errorf("capabilities inside: %q", l)
		}
	}
	if got := section(s, 4); got != "dst=192.0.2.5:80\n" {
		t.Errorf("traffic:\n%s", got)
	}
	if got, want := section(s, 5), "tunsocks-sandbox "+InitArg+" "; got != want {
		t.Errorf("PID 1 inside %q, want %q (a PID namespace with its own /proc)", got, want)
	}
	after, err := os.Stat("/dev/net/tun")
	if err != nil || after.Mode() != before.Mode() {
		t.Errorf("/dev/net/tun changed: %v -> %v (%v)", before.Mode(), after.Mode(), err)
	}
}

func TestLookPath(t *testing.T) {
	sh, err := LookPath("sh", []string{"PATH=/nonexistent:/bin:/usr/bin"})
	if err != nil || !filepath.IsAbs(sh) {
		t.Errorf("LookPath(sh) = %q, %v", sh, err)
	}
	if _, err := LookPath("sh", []string{"PATH=/nonexistent"}); !errors.Is(err, exec.ErrNotFound) {
		t.Errorf("LookPath with a PATH lacking sh: %v", err)
	}
	dir := t.TempDir()
	f := filepath.Join(dir, "tool")
	os.WriteFile(f, []byte("#!/bin/sh\n"), 0o644)
	if os.Geteuid() != 0 { // root may execute anything with an x bit; here there is none anyway
		if _, err := LookPath("tool", []string{"PATH=" + dir}); !errors.Is(err, os.ErrPermission) {
			t.Errorf("LookPath of a file without x: %v", err)
		}
	} else if _, err := LookPath("tool", []string{"PATH=" + dir}); err == nil {
		t.Errorf("LookPath of a file without x succeeded")
	}
}

func TestFinalPath(t *testing.T) {
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "a"), 0o755)
	os.WriteFile(filepath.Join(dir, "a", "file"), nil, 0o644)
	os.Symlink("a", filepath.Join(dir, "dirlink"))
	os.Symlink("dirlink/file", filepath.Join(dir, "l1"))
	os.Symlink(filepath.Join(dir, "l1"), filepath.Join(dir, "l2"))
	os.Symlink("missing/target", filepath.Join(dir, "dangling"))
	os.Symlink("loop", filepath.Join(dir, "loop"))
	real, _ := filepath.EvalSymlinks(dir)
	for _, c := range []struct{ in, want string }{
		{"l2", filepath.Join(real, "a", "file")},
		{"dirlink/file", filepath.Join(real, "a", "file")},
		{"dangling", filepath.Join(real, "missing", "target")},
	} {
		got, err := finalPath(filepath.Join(dir, c.in))
		if err != nil || got != c.want {
			t.Errorf("finalPath(%s) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	if _, err := finalPath(filepath.Join(dir, "loop")); err == nil {
		t.Error("finalPath of a symlink loop succeeded")
	}
}

func TestCheckName(t *testing.T) {
	for _, ok := range []string{"work", "a.b_c-1", strings.Repeat("x", 64)} {
		if err := CheckName(ok); err != nil {
			t.Errorf("CheckName(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".hidden", "a/b", "a b", strings.Repeat("x", 65), "..", "ü"} {
		if err := CheckName(bad); err == nil {
			t.Errorf("CheckName(%q) accepted", bad)
		}
	}
}

func TestSocketDir(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	if d, err := SocketDir(0, env(nil)); err != nil || d != "/run/tunsocks" {
		t.Errorf("root: %q %v", d, err)
	}
	if d, err := SocketDir(1000, env(map[string]string{"XDG_RUNTIME_DIR": "/run/user/1000"})); err != nil || d != "/run/user/1000/tunsocks" {
		t.Errorf("user: %q %v", d, err)
	}
	if _, err := SocketDir(1000, env(nil)); err == nil || !strings.Contains(err.Error(), "XDG_RUNTIME_DIR") {
		t.Errorf("user without XDG_RUNTIME_DIR: %v", err)
	}
}

// TestCheckFree: a name is taken only while something answers on its
// socket; a socket file left by a killed caller does not hold it.
func TestCheckFree(t *testing.T) {
	dir := t.TempDir()
	if err := CheckFree(dir, "work"); err != nil {
		t.Errorf("no socket: %v", err)
	}
	path := filepath.Join(dir, "work.sock")
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckFree(dir, "work"); err == nil || !strings.Contains(err.Error(), `an exec named "work" is already running`) {
		t.Errorf("a live socket: %v, want the name taken", err)
	}
	l.SetUnlinkOnClose(false) // as a SIGKILL leaves it
	l.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatal(err)
	}
	if err := CheckFree(dir, "work"); err != nil {
		t.Errorf("a socket nothing answers: %v", err)
	}
}

// TestRunCommandThatEndsAtOnce: a command that ends before Run looks (the
// init has reported its start and its exit, and gone) has started all
// the same. Before, Run picked at random between the start and the init's
// end, and `tunsocks exec -- true` failed now and then with "the init
// ended before the command started".
func TestRunCommandThatEndsAtOnce(t *testing.T) {
	for range 64 {
		ch, peer, err := socketpair()
		if err != nil {
			t.Fatal(err)
		}
		s := &Sandbox{spec: Spec{Args: []string{"true"}}, log: slog.New(slog.DiscardHandler), ctl: ch,
			started: make(chan message, 1), readerDone: make(chan struct{}), initDone: make(chan struct{})}
		// What read leaves when the init has come and gone.
		s.started <- message{Op: opStarted, Pid: 2}
		close(s.readerDone)
		close(s.initDone)
		err = s.Run()
		ch.close()
		peer.Close()
		if err != nil {
			t.Fatalf("Run of a command that ended at once: %v", err)
		}
	}
}
