package e2e

import (
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tunsocks/tunsocks/internal/lab"
	"github.com/tunsocks/tunsocks/internal/testenv"
)

// `tunsocks exec` end to end: tunsocks runs in the lab's app host, which
// here also has a plain route to the remote host through the proxy host
// (so "direct" is visible: the remote sees 10.201.0.2 then, 10.202.0.1
// through the SOCKS server). The SOCKS server on the proxy host resolves
// the test names with a dnsmasq of its own.

const execSocks = "socks5://10.201.0.1:1080"

// whoamiPort: a UDP service on the remote host that answers every datagram
// with its sender's address.
const whoamiPort = 7007

type execEnv struct {
	*env
	upstream  *proc
	remoteLog string // query log of the remote host's dnsmasq
}

func newExecEnv(t *testing.T) *execEnv {
	t.Helper()
	testenv.NeedTool(t, "curl", "curl")
	dnsmasq := testenv.NeedTool(t, "dnsmasq", "dnsmasq-base")
	e := newBareEnv(t)
	l := e.lab
	if err := l.Do(l.Remote, e.startRemoteServices); err != nil {
		t.Fatal(err)
	}
	if err := l.Do(l.Remote, func() error { return e.startWhoami() }); err != nil {
		t.Fatal(err)
	}
	// A direct way out of the app host (forwarding on the proxy host and
	// the remote host's way back), and the app host's default route on it.
	if err := l.EnableDirect(0x7473); err != nil {
		t.Fatal(err)
	}
	if err := lab.WithNetlink(l.App, func(h *netlink.Handle) error {
		for _, gw := range []netip.Addr{lab.ProxyDown4.Addr(), lab.ProxyDown6.Addr()} {
			dst := &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
			if gw.Is6() {
				dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
			}
			if err := h.RouteReplace(&netlink.Route{Dst: dst, Gw: gw.AsSlice()}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	names := []string{"name.test", "static.test", "echo.test", "join.test", "child.test"}
	var addrs []string
	for _, n := range names {
		addrs = append(addrs, "--address=/"+n+"/"+remote4.String())
	}
	// The SOCKS server's resolver.
	if err := l.SetResolvConf(l.Proxy, netip.MustParseAddr("127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	e.start(l.Proxy, dnsmasq, append([]string{"--no-daemon", "--port=53", "--listen-address=127.0.0.1", "--bind-interfaces",
		"--no-resolv", "--no-hosts", "--pid-file=", "--user=root"}, addrs...)...)
	// A resolver on the remote host that commands query over plain UDP.
	x := &execEnv{env: e, remoteLog: filepath.Join(t.TempDir(), "remote-dns.log")}
	e.start(l.Remote, dnsmasq, append([]string{"--no-daemon", "--port=53", "--listen-address=" + remote4.String(), "--bind-interfaces",
		"--no-resolv", "--no-hosts", "--log-queries", "--log-facility=" + x.remoteLog, "--pid-file=", "--user=root"}, addrs...)...)
	x.upstream = e.start(l.Proxy, binary, "server", "--listen", "10.201.0.1:1080", "--open")
	waitDial(t, e, "10.201.0.1:1080")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("upstream:\n%s", x.upstream.out.String())
		}
	})
	return x
}

func (e *env) startWhoami() error {
	pc, err := net.ListenPacket("udp", netip.AddrPortFrom(remote4, whoamiPort).String())
	if err != nil {
		return err
	}
	e.wg.Add(2)
	go func() {
		defer e.wg.Done()
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(fmt.Sprintf("%s: udp you are %s", buf[:n], from.(*net.UDPAddr).IP)), from)
		}
	}()
	go func() { defer e.wg.Done(); <-e.ctx.Done(); pc.Close() }()
	return nil
}

// execIn runs `tunsocks exec` in the app host with args after "exec" and
// returns its combined output and exit code.
func (x *execEnv) execIn(timeout time.Duration, args ...string) (string, int) {
	x.t.Helper()
	return x.appRun(timeout, append([]string{binary, "exec"}, args...)...)
}

// appRun runs a command in the app host; its output and exit code.
func (x *execEnv) appRun(timeout time.Duration, args ...string) (string, int) {
	x.t.Helper()
	ctx, cancel := context.WithTimeout(x.ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", x.lab.App}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // no terminal: signals are passed on
	cmd.WaitDelay = 5 * time.Second                      // a child left holding the output must not hang the test
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	x.t.Fatalf("%v: %v\n%s", args, err, out)
	return "", -1
}

// TestExecCurl: `tunsocks exec --proxy socks5://... -- curl http://name.test/`
// resolves the name to a fake IP and reaches the SOCKS server with the name;
// the same request outside exec goes direct. exec's own view: only lo and
// its TUN; its exit status is the command's.
func TestExecCurl(t *testing.T) {
	x := newExecEnv(t)
	out, code := x.appRun(30*time.Second, binary, "--log-level", "debug", "exec", "--proxy", execSocks, "--",
		"sh", "-c", "getent hosts name.test; curl -sS -m 10 http://name.test/")
	if code != 0 || !strings.Contains(out, "hello from remote, you are "+lab.ProxyUp4.Addr().String()) {
		t.Fatalf("exec curl: exit %d\n%s", code, out)
	}
	if !strings.Contains(out, "198.18.") {
		t.Errorf("name.test did not resolve to a fake IP inside:\n%s", out)
	}
	if !logged(x.upstream, "target=name.test:80") {
		t.Errorf("the SOCKS server did not get the name")
	}
	// tunsocks' log names the inbound and the program of the flow.
	curl, _ := filepath.EvalSymlinks(testenv.NeedTool(t, "curl", "curl"))
	if !strings.Contains(out, "in=exec:sh") || !strings.Contains(out, "proc="+curl) || !strings.Contains(out, "host=name.test") {
		t.Errorf("the flow log lacks in=exec:sh, proc=%s or host=name.test:\n%s", curl, out)
	}

	// Outside exec, in the same host: direct, and the upstream never hears.
	before := strings.Count(x.upstream.out.String(), "request")
	out, code = x.appRun(20*time.Second, "curl", "-sS", "-m", "10", "http://"+remote4.String()+"/")
	if code != 0 || !strings.Contains(out, "you are "+lab.AppUplink4.Addr().String()) {
		t.Errorf("curl outside exec: exit %d %s; want it direct", code, out)
	}
	time.Sleep(200 * time.Millisecond)
	if after := strings.Count(x.upstream.out.String(), "request"); after != before {
		t.Errorf("a request outside exec reached the SOCKS server")
	}

	out, code = x.execIn(20*time.Second, "--proxy", execSocks, "--", "sh", "-c", "ip -br link | awk '{print $1}'")
	if code != 0 || out != "lo\ntunsocks0\n" {
		t.Errorf("exec ip -br link: exit %d\n%s\nwant only lo and tunsocks0", code, out)
	}
	if out, code = x.execIn(20*time.Second, "--proxy", execSocks, "--", "sh", "-c", "exit 7"); code != 7 {
		t.Errorf("exec sh -c 'exit 7': exit %d, want 7\n%s", code, out)
	}
	if out, code = x.execIn(20*time.Second, "--proxy", execSocks, "--", "no-such-command"); code != 127 || !strings.Contains(out, "no-such-command: command not found") {
		t.Errorf("exec of a missing command: exit %d\n%s", code, out)
	}
}

// staticProbe is a Go program built with CGO_ENABLED=0: Go's own resolver,
// no libc, so LD_PRELOAD tools cannot see it.
const staticProbe = `package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

func main() {
	c, err := net.DialTimeout("tcp", "static.test:80", 10*time.Second)
	if err != nil {
		fmt.Println("tcp:", err)
		os.Exit(1)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: static.test\r\n\r\n")
	r := bufio.NewReader(c)
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			break
		}
		if strings.HasPrefix(l, "hello") {
			fmt.Print("tcp: ", l)
		}
	}
	c.Close()
	u, err := net.Dial("udp", "echo.test:7007")
	if err != nil {
		fmt.Println("udp:", err)
		os.Exit(1)
	}
	u.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 512)
	for i := 0; i < 5; i++ {
		u.Write([]byte("ping"))
		u.SetReadDeadline(time.Now().Add(2 * time.Second))
		if n, err := u.Read(buf); err == nil {
			fmt.Println(string(buf[:n]))
			return
		}
	}
	fmt.Println("udp: no answer")
	os.Exit(1)
}
`

// TestExecStaticGoBinary: a static Go binary's TCP (by name) and UDP are
// captured; the UDP service sees the proxy host, not the app host.
func TestExecStaticGoBinary(t *testing.T) {
	x := newExecEnv(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module staticprobe\n\ngo 1.22\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "main.go"), []byte(staticProbe), 0o644)
	bin := filepath.Join(dir, "probe")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = dir
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod", "GOTOOLCHAIN=local")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the probe: %v\n%s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatalf("the probe is dynamically linked")
		}
	}
	f.Close()
	out, code := x.execIn(40*time.Second, "--proxy", execSocks, "--", bin)
	if code != 0 {
		t.Fatalf("exec of the static binary: exit %d\n%s", code, out)
	}
	if !strings.Contains(out, "tcp: hello from remote, you are "+lab.ProxyUp4.Addr().String()) {
		t.Errorf("TCP of the static binary not through the proxy:\n%s", out)
	}
	if !strings.Contains(out, "ping: udp you are "+lab.ProxyUp4.Addr().String()) {
		t.Errorf("UDP of the static binary not through the proxy:\n%s", out)
	}
	if !logged(x.upstream, "target=static.test:80") {
		t.Errorf("the SOCKS server did not get static.test")
	}
	// Outside exec the same binary cannot even resolve the names: it
	// would have gone direct with no DNS of its own.
	if out, code := x.appRun(20*time.Second, bin); code == 0 {
		t.Errorf("the probe worked outside exec too:\n%s", out)
	}
}

// TestExecChildrenAndUDP: a shell's background children are captured, and
// so is plain UDP DNS to a resolver of the command's choice (which sees the
// proxy host asking).
func TestExecChildrenAndUDP(t *testing.T) {
	x := newExecEnv(t)
	testenv.NeedTool(t, "dig", "dnsutils")
	d := t.TempDir() // the sandbox sees the host's files
	script := "curl -sS -m 10 http://child.test/ > " + d + "/curl.out & " +
		"dig +short +tries=2 +time=3 @" + remote4.String() + " child.test > " + d + "/dig.out & " +
		"wait; echo curl: $(cat " + d + "/curl.out); echo dig: $(cat " + d + "/dig.out); echo fake: $(dig +short +tries=2 +time=3 child.test)"
	out, code := x.execIn(40*time.Second, "--proxy", execSocks, "--", "sh", "-c", script)
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, out)
	}
	if !strings.Contains(out, "curl: hello from remote, you are "+lab.ProxyUp4.Addr().String()) {
		t.Errorf("the background curl was not captured:\n%s", out)
	}
	if !strings.Contains(out, "dig: "+remote4.String()) {
		t.Errorf("dig @remote did not get an answer:\n%s", out)
	}
	if !strings.Contains(out, "fake: 198.18.") {
		t.Errorf("dig through resolv.conf did not get a fake IP:\n%s", out)
	}
	if log := readFile(x.remoteLog); !strings.Contains(log, "query[A] child.test from "+lab.ProxyUp4.Addr().String()) {
		t.Errorf("the remote resolver did not see the query come through the proxy host:\n%s", log)
	}
}

// TestExecSignals: SIGINT, SIGTERM and SIGHUP to tunsocks exec reach the
// command (tunsocks does not end on them), whose exit status tunsocks
// exits with.
func TestExecSignals(t *testing.T) {
	x := newExecEnv(t)
	for i, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP} {
		name := strings.TrimPrefix(unix.SignalName(sig), "SIG")
		p := x.start(x.lab.App, binary, "exec", "--proxy", execSocks, "--", "sh", "-c",
			fmt.Sprintf(`trap 'echo got-%s; exit %d' %s; echo ready; while :; do sleep 0.1; done`, name, 5+i, name))
		if !waitOutput(p, "ready", 20*time.Second) {
			t.Fatalf("the command did not start:\n%s", p.out.String())
		}
		syscall.Kill(p.cmd.Process.Pid, sig)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			t.Fatalf("tunsocks still runs after SIG%s:\n%s", name, p.out.String())
		}
		if code := p.cmd.ProcessState.ExitCode(); code != 5+i || !strings.Contains(p.out.String(), "got-"+name) {
			t.Errorf("SIG%s: exit %d, want %d from the command's trap:\n%s", name, code, 5+i, p.out.String())
		}
	}
}

// TestExecKilled: SIGKILL of tunsocks under a running command: the TUN
// goes, the command's next connect fails at once (it ignores the hangup
// to try), and when it has exited nothing is left.
func TestExecKilled(t *testing.T) {
	x := newExecEnv(t)
	script := `trap 'echo hangup' HUP; echo ready
while ip link show tunsocks0 >/dev/null 2>&1; do sleep 0.05; done
ip route get ` + remote4.String() + ` 2>&1; curl -sS -m 20 http://` + remote4.String() + `/ 2>/dev/null; echo curl=$?`
	p := x.start(x.lab.App, binary, "exec", "--proxy", execSocks, "--name", "e2e-killed", "--", "sh", "-c", script)
	if !waitOutput(p, "ready", 20*time.Second) {
		t.Fatalf("the command did not start:\n%s", p.out.String())
	}
	waitJoinable(t, "e2e-killed") // published once the command runs
	pgid := p.cmd.Process.Pid
	syscall.Kill(p.cmd.Process.Pid, syscall.SIGKILL) // tunsocks alone, not its group
	select {
	case <-p.done: // its output closed: the command and the sandbox's init are gone too
	case <-time.After(30 * time.Second):
		t.Fatalf("the command still runs after tunsocks was killed:\n%s", p.out.String())
	}
	out := p.out.String()
	if !strings.Contains(out, "Network is unreachable") || !strings.Contains(out, "curl=7\n") {
		t.Errorf("want an unreachable network and curl failing to connect (7), not timing out (28):\n%s", out)
	}
	for range 100 {
		if syscall.Kill(-pgid, 0) != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := syscall.Kill(-pgid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("processes of tunsocks' group are left: %v", err)
	}
	if out, _ := x.appRun(10*time.Second, "ip", "-o", "link", "show", "type", "tun"); strings.TrimSpace(out) != "" {
		t.Errorf("TUN devices left in the app host: %s", out)
	}
	// The one thing a SIGKILL leaves is --name's socket file, which
	// nothing answers: a join says so, and the next exec of that name
	// takes the name over and removes it when it ends.
	if out, code := x.execIn(20*time.Second, "--join", "e2e-killed", "--", "true"); code != 1 || !strings.Contains(out, "is not running any more") {
		t.Errorf("joining the killed exec: exit %d\n%s", code, out)
	}
	if out, code := x.appRun(20*time.Second, binary, "--log-level", "info", "exec", "--proxy", execSocks, "--name", "e2e-killed", "--", "true"); code != 0 ||
		!strings.Contains(out, "joinable") || strings.Contains(out, "cannot publish") {
		t.Errorf("an exec named like the killed one: exit %d\n%s", code, out)
	}
	if _, err := os.Stat("/run/tunsocks/e2e-killed.sock"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the killed exec's socket is left after the next one ended: %v", err)
	}
}

// TestExecMaskedResolver: a systemd-resolved socket at its real path,
// reachable outside, is not reachable inside (the test makes /run a tmpfs
// of its own mount namespace first: the machine's /run is not touched).
func TestExecMaskedResolver(t *testing.T) {
	x := newExecEnv(t)
	testenv.NeedTool(t, "socat", "socat")
	testenv.NeedTool(t, "unshare", "util-linux")
	sock := "/run/systemd/resolve/io.systemd.Resolve"
	script := `set -e
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/resolve
socat UNIX-LISTEN:` + sock + `,fork SYSTEM:'echo resolved-here' </dev/null >/dev/null 2>&1 &
spid=$!
for i in $(seq 100); do [ -S ` + sock + ` ] && break; sleep 0.05; done
echo outside: $(socat -u UNIX-CONNECT:` + sock + ` - 2>&1)
` + binary + ` exec --proxy ` + execSocks + ` -- sh -c 'echo inside: $(socat -u UNIX-CONNECT:` + sock + ` - 2>&1); ls -A /run/systemd/resolve | wc -l' || true
kill $spid`
	out, code := x.appRun(40*time.Second, "unshare", "-m", "--propagation", "private", "sh", "-c", script)
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, out)
	}
	if !strings.Contains(out, "outside: resolved-here") {
		t.Fatalf("the fake resolver socket does not answer outside:\n%s", out)
	}
	if !strings.Contains(out, "inside: ") || strings.Contains(out, "inside: resolved-here") || !strings.Contains(out, "\n0\n") {
		t.Errorf("inside, the resolver socket answered or its directory is not empty:\n%s", out)
	}
}

// rootlessScript runs body as uid 65534 in a mount namespace of the test's
// own; with openTun, /dev/net/tun there is a bind-mounted copy open to
// everyone (the machine's device node is never changed).
func rootlessScript(openTun bool, body string) string {
	s := "set -e\n"
	if openTun {
		s += `d=$(mktemp -d); mount -t tmpfs tmpfs $d; mknod -m 666 $d/tun c 10 200; mount --bind $d/tun /dev/net/tun
`
	}
	return s + "cd /; exec setpriv --reuid=65534 --regid=65534 --clear-groups " + body
}

// TestExecRootless: the whole of exec as an unprivileged user; and the
// exact fix when /dev/net/tun is not open to that user.
func TestExecRootless(t *testing.T) {
	x := newExecEnv(t)
	testenv.NeedTool(t, "setpriv", "util-linux")
	testenv.NeedTool(t, "unshare", "util-linux")
	if b, err := os.ReadFile("/proc/sys/user/max_user_namespaces"); err == nil && strings.TrimSpace(string(b)) == "0" {
		testenv.Unavailable(t, "user namespaces are switched off")
	}
	// uid 65534 must reach the binary.
	if err := os.Chmod(filepath.Dir(binary), 0o755); err != nil {
		t.Fatal(err)
	}
	mode, err := os.Stat("/dev/net/tun")
	if err != nil {
		t.Fatal(err)
	}
	body := binary + " exec --proxy " + execSocks + " -- sh -c 'id -u; curl -sS -m 10 http://name.test/'"
	out, code := x.appRun(40*time.Second, "unshare", "-m", "--propagation", "private", "sh", "-c", rootlessScript(true, body))
	if code != 0 || !strings.HasPrefix(out, "65534\n") || !strings.Contains(out, "hello from remote, you are "+lab.ProxyUp4.Addr().String()) {
		t.Errorf("rootless exec: exit %d\n%s", code, out)
	}
	if !logged(x.upstream, "target=name.test:80") {
		t.Errorf("the SOCKS server did not get the name from the rootless exec")
	}

	if mode.Mode().Perm()&0o006 == 0 {
		// The machine's /dev/net/tun is closed to others: the probe says so.
		out, code = x.appRun(20*time.Second, "unshare", "-m", "--propagation", "private", "sh", "-c", rootlessScript(false, body))
		want := "  - /dev/net/tun is not readable and writable by uid 65534 (mode " + mode.Mode().Perm().String() + ", owner 0:0)\n" +
			"    fix: open it to every user with a udev rule:\n" +
			"    echo 'KERNEL==\"tun\", MODE=\"0666\"' | sudo tee /etc/udev/rules.d/99-tun.rules\n"
		if code != 1 || !strings.Contains(out, want) || !strings.Contains(out, "Or run it with sudo") {
			t.Errorf("rootless exec with /dev/net/tun closed: exit %d\n%s\nwant exit 1 and:\n%s", code, out, want)
		}
	}
	if after, err := os.Stat("/dev/net/tun"); err != nil || after.Mode() != mode.Mode() {
		t.Errorf("/dev/net/tun changed: %v -> %v", mode.Mode(), after.Mode())
	}
}

// TestExecJoin: a second command joins a named exec and its flows go
// through the same tunsocks; the name's socket goes with the exec.
func TestExecJoin(t *testing.T) {
	x := newExecEnv(t)
	p := x.start(x.lab.App, binary, "exec", "--proxy", execSocks, "--name", "e2e-join", "--", "sh", "-c",
		"echo ready; readlink /proc/self/ns/net; sleep 1000")
	if !waitOutput(p, "ready", 20*time.Second) {
		t.Fatalf("the command did not start:\n%s", p.out.String())
	}
	sock := waitJoinable(t, "e2e-join")
	if out, code := x.execIn(20*time.Second, "--proxy", execSocks, "--name", "e2e-join", "--", "echo", "ran"); code != 2 ||
		!strings.Contains(out, `--name: an exec named "e2e-join" is already running`) || strings.Contains(out, "ran") {
		t.Errorf("a second exec of the same name: exit %d\n%s\nwant exit 2, the name taken, and the command not run", code, out)
	}
	out, code := x.execIn(30*time.Second, "--join", "e2e-join", "--", "sh", "-c", "readlink /proc/self/ns/net; curl -sS -m 10 http://join.test/; exit 3")
	if code != 3 || !strings.Contains(out, "hello from remote, you are "+lab.ProxyUp4.Addr().String()) {
		t.Errorf("joined command: exit %d\n%s", code, out)
	}
	if ns := strings.SplitN(out, "\n", 2)[0]; !strings.HasPrefix(ns, "net:[") || !strings.Contains(p.out.String(), ns) {
		t.Errorf("joined command in %q, not in the exec's namespace:\n%s", ns, p.out.String())
	}
	if !logged(x.upstream, "target=join.test:80") {
		t.Errorf("the joined command's flow did not reach the SOCKS server by name")
	}
	if out, code := x.execIn(20*time.Second, "--join", "e2e-join", "--proxy", execSocks, "--", "true"); code != 2 || !strings.Contains(out, "--proxy does not apply") {
		t.Errorf("--join with --proxy: exit %d\n%s", code, out)
	}
	p.stop()
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left after the exec ended: %v", sock, err)
	}
	if _, err := os.Stat(filepath.Dir(sock)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left after the exec ended: %v", filepath.Dir(sock), err)
	}
	if out, code := x.execIn(20*time.Second, "--join", "e2e-join", "--", "true"); code != 1 || !strings.Contains(out, `no exec named "e2e-join" is running`) {
		t.Errorf("joining an ended exec: exit %d\n%s", code, out)
	}
}

// TestExecHostLoopback: with --allow-host-loopback the command reaches a
// service on the app host's 127.0.0.1 at 169.254.1.2; without, it does not.
func TestExecHostLoopback(t *testing.T) {
	x := newExecEnv(t)
	if err := x.lab.Do(x.lab.App, func() error {
		ln, err := net.Listen("tcp", "127.0.0.1:8089")
		if err != nil {
			return err
		}
		x.serve(ln, func(c net.Conn) {
			fmt.Fprintf(c, "HTTP/1.0 200 OK\r\nContent-Length: 12\r\n\r\nloopback-ok\n")
		}, nil)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	get := "curl -sS -m 5 http://169.254.1.2:8089/"
	if out, code := x.execIn(30*time.Second, "--proxy", execSocks, "--allow-host-loopback", "--", "sh", "-c", get); code != 0 || !strings.Contains(out, "loopback-ok") {
		t.Errorf("with --allow-host-loopback: exit %d\n%s", code, out)
	}
	if out, code := x.execIn(30*time.Second, "--proxy", execSocks, "--", "sh", "-c", get); code == 0 || strings.Contains(out, "loopback-ok") {
		t.Errorf("without --allow-host-loopback the host's loopback was reached: exit %d\n%s", code, out)
	}
	if out, code := x.execIn(30*time.Second, "--proxy", execSocks, "--", "sh", "-c", "curl -sS -m 5 http://127.0.0.1:8089/"); code == 0 || strings.Contains(out, "loopback-ok") {
		t.Errorf("127.0.0.1 inside reached the host's loopback: exit %d\n%s", code, out)
	}
}

// waitJoinable waits until the exec named name answers on its socket
// (a socket file alone may be a killed one's), and returns the socket.
// The socket is removed when the test ends, should the test leave it.
func waitJoinable(t *testing.T, name string) string {
	t.Helper()
	sock := "/run/tunsocks/" + name + ".sock"
	t.Cleanup(func() {
		os.Remove(sock)
		os.Remove(filepath.Dir(sock)) // when empty
	})
	for range 200 {
		if c, err := net.Dial("unixpacket", sock); err == nil {
			c.Close()
			return sock
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("exec %q never answered on %s", name, sock)
	return ""
}

func waitOutput(p *proc, s string, d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if strings.Contains(p.out.String(), s) {
			return true
		}
		select {
		case <-p.done:
			return strings.Contains(p.out.String(), s)
		default:
		}
	}
	return false
}

// TestExecIdentity: as root, the command runs as the user sudo was invoked
// by (SUDO_UID, SUDO_GID) or --user, never with capabilities.
func TestExecIdentity(t *testing.T) {
	x := newExecEnv(t)
	check := "id -u; id -g; grep -E '^Cap(Prm|Eff)' /proc/self/status; curl -sS -m 10 http://name.test/"
	for _, c := range []struct {
		name string
		args []string
	}{
		{"sudo", []string{"env", "SUDO_UID=65534", "SUDO_GID=65534", binary, "exec", "--proxy", execSocks, "--", "sh", "-c", check}},
		{"--user", []string{binary, "exec", "--proxy", execSocks, "--user", "65534", "--", "sh", "-c", check}},
	} {
		out, code := x.appRun(30*time.Second, c.args...)
		want := "65534\n65534\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nhello from remote, you are " + lab.ProxyUp4.Addr().String()
		if code != 0 || !strings.HasPrefix(out, want) {
			t.Errorf("%s: exit %d\n%s\nwant:\n%s", c.name, code, out, want)
		}
	}
}

// TestExecProcessRule: PROCESS-NAME rules see the processes inside the
// sandbox (their sockets are looked up in its network namespace), as root
// and rootless.
func TestExecProcessRule(t *testing.T) {
	x := newExecEnv(t)
	curl := testenv.NeedTool(t, "curl", "curl")
	dir, err := os.MkdirTemp("", "tunsocks-exec") // uid 65534 reads it below
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	curlB := filepath.Join(dir, "curl-b")
	copyFile(t, curl, curlB)
	cfg := filepath.Join(dir, "tunsocks.yaml")
	os.WriteFile(cfg, []byte(`proxies:
  - name: up
    url: `+execSocks+`
rules:
  - PROCESS-NAME,curl-b,REJECT
  - MATCH,up
`), 0o644)
	script := curlB + " -sS -m 10 http://name.test/ >/dev/null 2>&1; echo b=$?; curl -sS -m 10 http://name.test/; echo a=$?"
	check := func(name, out string, code int) {
		t.Helper()
		if code != 0 || !strings.Contains(out, "b=7\n") || !strings.Contains(out, "hello from remote, you are "+lab.ProxyUp4.Addr().String()) || !strings.Contains(out, "a=0\n") {
			t.Errorf("%s: want curl-b rejected at once (7) and curl through the proxy: exit %d\n%s", name, code, out)
		}
	}
	out, code := x.execIn(40*time.Second, "--config", cfg, "--", "sh", "-c", script)
	check("root", out, code)

	testenv.NeedTool(t, "setpriv", "util-linux")
	testenv.NeedTool(t, "unshare", "util-linux")
	os.Chmod(filepath.Dir(binary), 0o755)
	os.Chmod(cfg, 0o644)
	body := binary + " exec --config " + cfg + " -- sh -c '" + script + "'"
	out, code = x.appRun(40*time.Second, "unshare", "-m", "--propagation", "private", "sh", "-c", rootlessScript(true, body))
	check("rootless", out, code)
}

// TestExecInboundRule: IN-NAME and IN-TYPE rules tell exec's commands
// apart: `exec -- curl` is exec:curl, `exec -- sh -c curl` is exec:sh.
func TestExecInboundRule(t *testing.T) {
	x := newExecEnv(t)
	cfg := filepath.Join(t.TempDir(), "tunsocks.yaml")
	os.WriteFile(cfg, []byte(`proxies:
  - name: up
    url: `+execSocks+`
rules:
  - IN-NAME,exec:curl,up
  - AND,((IN-TYPE,exec),(DST-PORT,80)),REJECT
  - MATCH,up
`), 0o644)
	out, code := x.execIn(30*time.Second, "--config", cfg, "--", "curl", "-sS", "-m", "10", "http://name.test/")
	if code != 0 || !strings.Contains(out, "hello from remote, you are "+lab.ProxyUp4.Addr().String()) {
		t.Errorf("exec -- curl (IN-NAME,exec:curl,up): exit %d\n%s", code, out)
	}
	out, code = x.execIn(30*time.Second, "--config", cfg, "--", "sh", "-c", "curl -sS -m 10 http://name.test/")
	if code != 7 || strings.Contains(out, "hello from remote") {
		t.Errorf("exec -- sh -c curl (IN-TYPE exec, port 80: REJECT): exit %d, want 7 (refused at once)\n%s", code, out)
	}
}

// TestExecAPI: exec serves run's API over its flows. The flow table lists
// the command's flow as inbound exec:curl with the process found in the
// sandbox, the metrics count it by that inbound, and closing the flow there
// resets the command's connection (curl exits 56, and exec with it). A
// config shared with run, with auto-route in it, routes nothing: the app
// host's policy rules stay as they were.
func TestExecAPI(t *testing.T) {
	x := newExecEnv(t)
	curl, err := filepath.EvalSymlinks(testenv.NeedTool(t, "curl", "curl"))
	if err != nil {
		t.Fatal(err)
	}
	// A service on the remote host that never answers: curl's flow stays open.
	if err := x.lab.Do(x.lab.Remote, func() error {
		ln, err := net.Listen("tcp", netip.AddrPortFrom(remote4, 8091).String())
		if err != nil {
			return err
		}
		x.serve(ln, func(c net.Conn) { io.Copy(io.Discard, c) }, nil)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	rulesBefore, _ := x.appRun(10*time.Second, "ip", "rule", "show")
	cfg := filepath.Join(t.TempDir(), "tunsocks.yaml")
	os.WriteFile(cfg, []byte(`proxies:
  - name: up
    url: `+execSocks+`
rules:
  - MATCH,up
route:
  auto-route: true
  kill-switch: true
`), 0o644)
	p := x.start(x.lab.App, binary, "exec", "--config", cfg, "--api", apiAddr, "--api-secret", apiSecret, "--metrics", metricsAddr,
		"--", "curl", "-sS", "-m", "60", "http://name.test:8091/")
	a := &apiEnv{env: x.env}
	a.http = &http.Client{Transport: &http.Transport{DialContext: x.app.DialContext}, Timeout: 20 * time.Second}
	t.Cleanup(a.http.CloseIdleConnections)

	// The API listens before the sandbox exists; poll until curl's flow
	// is in the table.
	var flow conn
	for deadline := time.Now().Add(20 * time.Second); flow.ID == ""; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no flow to port 8091 in /connections:\n%s", p.out.String())
		}
		select {
		case <-p.done:
			t.Fatalf("exec ended early:\n%s", p.out.String())
		default:
		}
		req, _ := http.NewRequestWithContext(x.ctx, "GET", "http://"+apiAddr+"/connections", nil)
		req.Header.Set("Authorization", "Bearer "+apiSecret)
		resp, err := a.http.Do(req)
		if err != nil {
			continue // not listening yet
		}
		var snap struct{ Connections []conn }
		err = json.NewDecoder(resp.Body).Decode(&snap)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("/connections: %v", err)
		}
		for _, c := range snap.Connections {
			if c.Metadata.DestinationPort == "8091" {
				flow = c
			}
		}
	}
	if flow.Metadata.InboundName != "exec:curl" || flow.Metadata.ProcessPath != curl || flow.Metadata.Process != filepath.Base(curl) ||
		len(flow.Chains) != 1 || flow.Chains[0] != "up" {
		t.Errorf("flow %+v\nwant inbound exec:curl, process %s, through up", flow, curl)
	}
	// The flow names curl's pid as this namespace sees it (curl still
	// holds the flow open).
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", flow.Metadata.TunsocksPid)); flow.Metadata.TunsocksPid <= 0 || err != nil || exe != curl {
		t.Errorf("flow's pid %d: /proc/PID/exe %q, %v; want %s", flow.Metadata.TunsocksPid, exe, err, curl)
	}
	var counted bool
	for _, l := range strings.Split(a.scrape(t), "\n") {
		if strings.HasPrefix(l, "tunsocks_connections_total{") && strings.Contains(l, `inbound="exec:curl"`) && strings.Contains(l, `network="tcp"`) {
			counted = true
		}
	}
	if !counted {
		t.Errorf("tunsocks_connections_total has no tcp flow of inbound exec:curl")
	}
	if rules, _ := x.appRun(10*time.Second, "ip", "rule", "show"); rules != rulesBefore {
		t.Errorf("exec with auto-route in its config changed the host's rules:\n%s\nwas:\n%s", rules, rulesBefore)
	}

	if code, b := a.do(t, "DELETE", "/connections/"+flow.ID, ""); code/100 != 2 {
		t.Fatalf("DELETE /connections/%s: %d %s", flow.ID, code, b)
	}
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("curl still runs after its flow was closed:\n%s", p.out.String())
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 56 || !strings.Contains(p.out.String(), "reset") {
		t.Errorf("exit %d, want curl's 56 (connection reset):\n%s", code, p.out.String())
	}
}
