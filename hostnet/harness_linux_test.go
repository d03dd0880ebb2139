package hostnet

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
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

	"github.com/tunsocks/tunsocks/internal/netns"
	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/tun"
)

// The netns tests run the package the way tunsocks does: in a process of
// its own inside the "host" namespace. The test binary re-executes itself
// as that process (helperMain), which opens a TUN, calls Install, reports
// every TCP SYN and UDP datagram that enters the TUN, and removes
// everything on SIGTERM; SIGKILL leaves what a crash leaves.

const helperEnv = "HOSTNET_TEST_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "run":
		os.Exit(helperRun())
	case "cleanup":
		os.Exit(helperCleanup())
	case "dial", "listen":
		os.Exit(helperSocket())
	}
	removeStaleNamespaces()
	// The resolved client's watcher and the D-Bus connections must be
	// gone once each test has closed what it opened.
	goleak.VerifyTestMain(m)
}

// helperConfig is what a test asks the helper to install.
type helperConfig struct {
	Config
	TunAddrs []string
}

func helperRun() int {
	var hc helperConfig
	if err := json.Unmarshal([]byte(os.Getenv("HOSTNET_CONFIG")), &hc); err != nil {
		fmt.Println("FAIL config:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg := hc.Config
	cfg.Logger = log
	for _, a := range hc.TunAddrs {
		cfg.TunAddrs = append(cfg.TunAddrs, netip.MustParsePrefix(a))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := Recover(cfg); err != nil {
		fmt.Println("FAIL recover:", err)
		return 1
	}
	dev, err := tun.Open(ctx, tun.Config{Name: cfg.Tun, FD: tun.NoFD, Addrs: cfg.TunAddrs, MTU: 1500})
	if err != nil {
		fmt.Println("FAIL tun:", err)
		return 1
	}
	defer dev.Close()
	h, err := Install(ctx, cfg)
	if err != nil {
		fmt.Println("FAIL install:", err)
		return 1
	}
	fmt.Println(Block(h.State()))
	fmt.Println("READY", h.StatePath())
	go reportPackets(dev)
	<-ctx.Done()
	if err := h.Close(); err != nil {
		fmt.Println("FAIL close:", err)
		return 1
	}
	fmt.Println("CLOSED")
	return 0
}

// reportPackets prints "TUN tcp SRC -> DST" for each SYN and "TUN udp ..."
// for each datagram that enters the TUN.
func reportPackets(dev *tun.Device) {
	bufs := make([][]byte, dev.BatchSize())
	sizes := make([]int, len(bufs))
	for i := range bufs {
		bufs[i] = make([]byte, 65536)
	}
	for {
		n, err := dev.Read(bufs, sizes, 0)
		if err != nil {
			return
		}
		for i := 0; i < n; i++ {
			if line := describePacket(bufs[i][:sizes[i]]); line != "" {
				fmt.Println(line)
			}
		}
	}
}

func describePacket(p []byte) string {
	if len(p) < 1 {
		return ""
	}
	var src, dst netip.Addr
	var proto byte
	var l4 []byte
	switch p[0] >> 4 {
	case 4:
		if len(p) < 20 {
			return ""
		}
		ihl := int(p[0]&0xf) * 4
		src, _ = netip.AddrFromSlice(p[12:16])
		dst, _ = netip.AddrFromSlice(p[16:20])
		proto, l4 = p[9], p[ihl:]
	case 6:
		if len(p) < 40 {
			return ""
		}
		src, _ = netip.AddrFromSlice(p[8:24])
		dst, _ = netip.AddrFromSlice(p[24:40])
		proto, l4 = p[6], p[40:]
	default:
		return ""
	}
	if len(l4) < 4 {
		return ""
	}
	sport, dport := uint16(l4[0])<<8|uint16(l4[1]), uint16(l4[2])<<8|uint16(l4[3])
	switch proto {
	case 6:
		if len(l4) < 14 || l4[13]&0x12 != 0x02 { // SYN without ACK
			return ""
		}
		return fmt.Sprintf("TUN tcp %s -> %s", netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport))
	case 17:
		return fmt.Sprintf("TUN udp %s -> %s", netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport))
	}
	return ""
}

// helperSocket dials (prints what the server said) or listens (prints
// LISTENING, then serves until killed), after joining HOSTNET_CGROUP and
// becoming HOSTNET_UID when they are set.
func helperSocket() int {
	if cg := os.Getenv("HOSTNET_CGROUP"); cg != "" {
		if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			fmt.Println("FAIL cgroup:", err)
			return 1
		}
	}
	if u := os.Getenv("HOSTNET_UID"); u != "" {
		uid, _ := strconv.Atoi(u)
		if err := syscall.Setgid(uid); err != nil {
			fmt.Println("FAIL setgid:", err)
			return 1
		}
		if err := syscall.Setuid(uid); err != nil {
			fmt.Println("FAIL setuid:", err)
			return 1
		}
	}
	addr := os.Getenv("HOSTNET_ADDR")
	if os.Getenv(helperEnv) == "listen" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Println("FAIL listen:", err)
			return 1
		}
		fmt.Println("LISTENING")
		for {
			c, err := ln.Accept()
			if err != nil {
				return 1
			}
			c.Close()
		}
	}
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		fmt.Println("FAIL dial:", err)
		return 1
	}
	c.SetDeadline(time.Now().Add(2 * time.Second))
	b, _ := io.ReadAll(c)
	fmt.Print(string(b))
	return 0
}

// dialAs dials addr from ns in a process of its own, in cgroup cg and as
// uid when they are set ("" and -1 otherwise), and returns its output.
func (tp *topo) dialAs(ns, cg string, uid int, addr netip.AddrPort) (string, error) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=dial", "HOSTNET_ADDR="+addr.String(), "HOSTNET_CGROUP="+cg)
	if uid >= 0 {
		cmd.Env = append(cmd.Env, "HOSTNET_UID="+strconv.Itoa(uid))
	}
	var out testenv.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := startIn(ns, cmd); err != nil {
		return "", err
	}
	err := cmd.Wait()
	return out.String(), err
}

// listenAs starts a listener on addr in ns, in cgroup cg and as uid, and
// waits until it listens; it is killed when the test ends.
func (tp *topo) listenAs(ns, cg string, uid int, addr netip.AddrPort) *exec.Cmd {
	tp.t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=listen", "HOSTNET_ADDR="+addr.String(), "HOSTNET_CGROUP="+cg)
	if uid >= 0 {
		cmd.Env = append(cmd.Env, "HOSTNET_UID="+strconv.Itoa(uid))
	}
	out := &testenv.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := startIn(ns, cmd); err != nil {
		tp.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	tp.t.Cleanup(func() { cmd.Process.Kill(); <-done })
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "LISTENING") {
		if time.Now().After(deadline) || strings.Contains(out.String(), "FAIL") {
			tp.t.Fatalf("listener did not start:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return cmd
}

// testCgroup makes a cgroup for the test under the cgroup2 mount and
// removes it when the test ends (after its processes are gone).
func testCgroup(t *testing.T, name string) (full, rel string) {
	t.Helper()
	mnt, err := cgroup2Mount()
	if err != nil {
		testenv.Unavailable(t, err.Error())
	}
	rel = fmt.Sprintf("%s%d-%s", nsPrefix, os.Getpid(), name)
	full = filepath.Join(mnt, rel)
	if err := os.Mkdir(full, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for range 50 {
			if err := os.Remove(full); err == nil || os.IsNotExist(err) {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("cgroup %s could not be removed", full)
	})
	return full, rel
}

func helperCleanup() int {
	log := slog.New(slog.NewTextHandler(os.Stdout, nil))
	done, err := Cleanup(os.Getenv("HOSTNET_STATE_DIR"), os.Getenv("HOSTNET_TUN"), log)
	for _, c := range done {
		fmt.Printf("CLEANED pid %d tun %s (%d objects)\n", c.PID, c.Tun, len(c.Objects))
	}
	if err != nil {
		fmt.Println("FAIL cleanup:", err)
		return 1
	}
	return 0
}

// Addresses of the test topology, which exists only in its namespaces:
//
//	device (192.168.50.2) --lan0-- host (192.0.2.2) --up0-- wan (192.0.2.1)
//	                                                          203.0.113.10, .20  (services)
var (
	service4  = netip.MustParseAddr("203.0.113.10")
	excluded4 = netip.MustParseAddr("203.0.113.20")
	service6  = netip.MustParseAddr("2001:db8:2::10")
	deviceLAN = netip.MustParseAddr("192.168.50.2")
)

const nsPrefix = "hn-"

type topo struct {
	t                 *testing.T
	host, wan, device string
	stateDir          string
	// ipNetnsExec starts helpers under `ip netns exec` (a private mount
	// namespace whose /sys lacks the cgroup mounts) instead of forking
	// them from a thread in the namespace.
	ipNetnsExec bool
}

// removeStaleNamespaces deletes namespaces left by a test binary that died.
func removeStaleNamespaces() {
	names, _ := netns.List()
	for _, n := range names {
		rest, ok := strings.CutPrefix(n, nsPrefix)
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(strings.SplitN(rest, "-", 2)[0])
		if err != nil {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			netns.Delete(n)
		}
	}
}

// newTopo builds host and wan (and a device on host's LAN), and deletes
// them when the test ends.
func newTopo(t *testing.T) *topo {
	t.Helper()
	testenv.NeedRoot(t, "network namespaces and TUN devices")
	testenv.NeedTool(t, "ip", "iproute2")
	testenv.NeedTool(t, "nft", "nftables")
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		testenv.Unavailable(t, "no /dev/net/tun")
	}
	id := fmt.Sprintf("%s%d-%s", nsPrefix, os.Getpid(), shortName(t.Name()))
	tp := &topo{t: t, host: id + "-h", wan: id + "-w", device: id + "-d", stateDir: t.TempDir()}
	for _, n := range []string{tp.host, tp.wan, tp.device} {
		if err := netns.Create(n); err != nil {
			t.Fatal(err)
		}
		n := n
		t.Cleanup(func() {
			if err := netns.Delete(n); err != nil {
				t.Errorf("deleting namespace %s: %v", n, err)
			}
		})
	}
	for _, n := range []string{tp.host, tp.wan, tp.device} {
		tp.in(n, "ip link set lo up")
	}
	tp.ip("link add up0 netns %s type veth peer name up0 netns %s", tp.host, tp.wan)
	tp.ip("link add lan0 netns %s type veth peer name eth0 netns %s", tp.host, tp.device)
	tp.in(tp.host, "ip addr add 192.0.2.2/24 dev up0")
	tp.in(tp.host, "ip addr add 2001:db8:1::2/64 dev up0 nodad")
	tp.in(tp.host, "ip link set up0 up")
	tp.in(tp.host, "ip addr add 192.168.50.1/24 dev lan0")
	tp.in(tp.host, "ip link set lan0 up")
	tp.in(tp.host, "ip route add default via 192.0.2.1")
	tp.in(tp.host, "ip -6 route add default via 2001:db8:1::1")
	tp.in(tp.wan, "ip addr add 192.0.2.1/24 dev up0")
	tp.in(tp.wan, "ip addr add 2001:db8:1::1/64 dev up0 nodad")
	tp.in(tp.wan, "ip link set up0 up")
	tp.in(tp.wan, "ip addr add 203.0.113.10/32 dev lo")
	tp.in(tp.wan, "ip addr add 203.0.113.20/32 dev lo")
	tp.in(tp.wan, "ip addr add 2001:db8:2::10/128 dev lo nodad")
	tp.in(tp.wan, "ip route add 192.168.50.0/24 via 192.0.2.2")
	tp.in(tp.device, "ip addr add 192.168.50.2/24 dev eth0")
	tp.in(tp.device, "ip link set eth0 up")
	tp.in(tp.device, "ip route add default via 192.168.50.1")
	return tp
}

func shortName(s string) string {
	s = strings.NewReplacer("/", "", "Test", "").Replace(s)
	if len(s) > 8 {
		s = s[:8]
	}
	return strings.ToLower(s)
}

func (tp *topo) ip(format string, a ...any) {
	tp.t.Helper()
	args := strings.Fields(fmt.Sprintf(format, a...))
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		tp.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// in runs a command line in a namespace and fails the test if it fails.
func (tp *topo) in(ns, cmdline string) string {
	tp.t.Helper()
	out, err := tp.try(ns, cmdline)
	if err != nil {
		tp.t.Fatalf("in %s: %s: %v\n%s", ns, cmdline, err, out)
	}
	return out
}

func (tp *topo) try(ns, cmdline string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, strings.Fields(cmdline)...)...).CombinedOutput()
	return string(out), err
}

// snapshot is everything a run may change in ns: rules, routes of every
// table, the nftables ruleset and the sysctls tunsocks touches.
func (tp *topo) snapshot(ns string) string {
	tp.t.Helper()
	var b strings.Builder
	for _, c := range []string{"ip rule", "ip -6 rule", "ip route show table all", "ip -6 route show table all", "nft list ruleset"} {
		// Link-local addresses appear on their own a moment after a link
		// is up; they are not what a run changes.
		var keep []string
		for _, l := range strings.SplitAfter(tp.in(ns, c), "\n") {
			if !strings.Contains(l, "fe80::") {
				keep = append(keep, l)
			}
		}
		fmt.Fprintf(&b, "## %s\n%s", c, strings.Join(keep, ""))
	}
	for _, s := range []string{"net/ipv4/ip_forward", "net/ipv4/conf/all/src_valid_mark", "net/ipv6/conf/all/forwarding", "net/ipv4/conf/all/rp_filter"} {
		fmt.Fprintf(&b, "## %s = %s", s, tp.in(ns, "cat /proc/sys/"+s))
	}
	return b.String()
}

// listen serves TCP in a namespace: it answers every connection with
// "hello from ADDR, you are REMOTE\n" and closes. It is stopped when the
// test ends.
func (tp *topo) listen(ns string, addr netip.AddrPort) {
	tp.t.Helper()
	var ln net.Listener
	err := netns.Do(ns, func() (err error) {
		ln, err = net.Listen("tcp", addr.String())
		return err
	})
	if err != nil {
		tp.t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "hello from %s, you are %s\n", addr, c.RemoteAddr())
			c.Close()
		}
	}()
	tp.t.Cleanup(func() { ln.Close(); wg.Wait() })
}

// dial connects from ns to addr (with SO_MARK mark when not 0, as uid
// when uid is not 0 through a child process) and returns the greeting.
func (tp *topo) dial(ns string, addr netip.AddrPort, mark uint32) (string, error) {
	var c net.Conn
	err := netns.Do(ns, func() (err error) {
		d := net.Dialer{Timeout: 2 * time.Second}
		if mark != 0 {
			d.Control = func(_, _ string, rc syscall.RawConn) error {
				var serr error
				rc.Control(func(fd uintptr) {
					serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, int(mark))
				})
				return serr
			}
		}
		c, err = d.Dial("tcp", addr.String())
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

// helper is a running helper process.
type helper struct {
	t    *testing.T
	cmd  *exec.Cmd
	out  *testenv.Buffer
	done chan struct{}
}

// startHelper runs Install with cfg in the host namespace and waits until
// it is ready (or fails the test with its output).
func (tp *topo) startHelper(cfg Config, tunAddrs ...string) *helper {
	tp.t.Helper()
	h, err := tp.tryHelper(cfg, tunAddrs...)
	if err != nil {
		tp.t.Fatal(err)
	}
	return h
}

func (tp *topo) tryHelper(cfg Config, tunAddrs ...string) (*helper, error) {
	tp.t.Helper()
	if len(tunAddrs) == 0 {
		tunAddrs = []string{"198.18.0.1/15", "fc00::1/18"}
	}
	if cfg.Tun == "" {
		cfg.Tun = "tsk0"
	}
	if cfg.StateDir == "" {
		cfg.StateDir = tp.stateDir
	}
	if cfg.DNSConfig == "" {
		cfg.DNSConfig = DNSNone
	}
	b, err := json.Marshal(helperConfig{Config: cfg, TunAddrs: tunAddrs})
	if err != nil {
		return nil, err
	}
	h := &helper{t: tp.t, out: &testenv.Buffer{}, done: make(chan struct{})}
	h.cmd = exec.Command(os.Args[0], "-test.run=^$")
	if tp.ipNetnsExec {
		h.cmd = exec.Command("ip", "netns", "exec", tp.host, os.Args[0], "-test.run=^$")
	}
	h.cmd.Env = append(os.Environ(), helperEnv+"=run", "HOSTNET_CONFIG="+string(b))
	h.cmd.Stdout, h.cmd.Stderr = h.out, h.out
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := func() error { return startIn(tp.host, h.cmd) }
	if tp.ipNetnsExec {
		start = h.cmd.Start
	}
	if err := start(); err != nil {
		return nil, err
	}
	go func() { h.cmd.Wait(); close(h.done) }()
	tp.t.Cleanup(func() { h.stop() })
	deadline := time.After(20 * time.Second)
	for !strings.Contains(h.out.String(), "READY") {
		select {
		case <-h.done:
			return h, fmt.Errorf("helper exited before it was ready:\n%s", h.out.String())
		case <-deadline:
			return h, fmt.Errorf("helper not ready after 20 s:\n%s", h.out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return h, nil
}

// startIn starts cmd in network namespace ns: forked from a thread inside
// it, the child inherits the namespace (and, unlike under ip netns exec,
// keeps the host's /sys, where the cgroup2 hierarchy is mounted).
func startIn(ns string, cmd *exec.Cmd) error {
	return netns.Do(ns, cmd.Start)
}

// pid is the helper's pid.
func (h *helper) pid() int { return h.cmd.Process.Pid }

// stop sends SIGTERM and waits for a clean exit.
func (h *helper) stop() {
	h.t.Helper()
	select {
	case <-h.done:
		return
	default:
	}
	h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.done:
	case <-time.After(10 * time.Second):
		h.cmd.Process.Kill()
		<-h.done
		h.t.Errorf("helper did not stop on SIGTERM:\n%s", h.out.String())
	}
	if !strings.Contains(h.out.String(), "CLOSED") {
		h.t.Errorf("helper did not close cleanly:\n%s", h.out.String())
	}
}

func (h *helper) kill() {
	h.cmd.Process.Kill()
	<-h.done
}

// waitOutput waits (bounded) until the helper printed s.
func (h *helper) waitOutput(s string, within time.Duration) bool {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if strings.Contains(h.out.String(), s) {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

func (tp *topo) cleanup(tun string) string {
	tp.t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=cleanup", "HOSTNET_STATE_DIR="+tp.stateDir, "HOSTNET_TUN="+tun)
	var out testenv.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := startIn(tp.host, cmd)
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		tp.t.Fatalf("cleanup: %v\n%s", err, out.String())
	}
	return out.String()
}

// ruleLines returns `ip [-6] rule` lines with priorities in [from, to].
func (tp *topo) ruleLines(v6 bool, from, to int) []string {
	tp.t.Helper()
	cmd := "ip rule"
	if v6 {
		cmd = "ip -6 rule"
	}
	var out []string
	sc := bufio.NewScanner(strings.NewReader(tp.in(tp.host, cmd)))
	for sc.Scan() {
		line := strings.Join(strings.Fields(sc.Text()), " ")
		p, _, ok := strings.Cut(line, ":")
		n, err := strconv.Atoi(p)
		if ok && err == nil && n >= from && n <= to {
			out = append(out, line)
		}
	}
	return out
}

func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
