package hostnet

import (
	"bufio"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

// systemd-resolved is not on the test machines: these tests run a private
// dbus-daemon and a fake org.freedesktop.resolve1 that records each call.

// privateBus starts a dbus-daemon of its own and returns its address.
func privateBus(t *testing.T) string {
	t.Helper()
	daemon := testenv.NeedTool(t, "dbus-daemon", "dbus")
	dir := t.TempDir()
	conf := writeFile(t, dir, "bus.conf", `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>tunsocks-test</type>
  <listen>unix:path=`+filepath.Join(dir, "bus")+`</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
`)
	cmd := exec.Command(daemon, "--config-file="+conf, "--nofork", "--print-address")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("dbus-daemon printed no address: %v", err)
	}
	return strings.TrimSpace(line)
}

// fakeResolved is org.freedesktop.resolve1.Manager, recording calls.
type fakeResolved struct {
	conn   *dbus.Conn
	failOn string

	mu    sync.Mutex
	calls []string
}

func startFakeResolved(t *testing.T, bus, failOn string) *fakeResolved {
	t.Helper()
	conn, err := dbus.Connect(bus)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeResolved{conn: conn, failOn: failOn}
	if err := conn.Export(f, resolvedPath, resolvedIface); err != nil {
		t.Fatal(err)
	}
	reply, err := conn.RequestName(resolvedName, dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("own %s: %v %v", resolvedName, reply, err)
	}
	t.Cleanup(func() { conn.Close() })
	return f
}

func (f *fakeResolved) record(method string, args ...any) *dbus.Error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := method
	for _, a := range args {
		s += " " + fmt.Sprint(a)
	}
	f.calls = append(f.calls, s)
	if method == f.failOn {
		return dbus.MakeFailedError(fmt.Errorf("refused by the fake"))
	}
	return nil
}

func (f *fakeResolved) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeResolved) waitCalls(n int) []string {
	deadline := time.Now().Add(20 * time.Second) // only a failure waits it out
	for time.Now().Before(deadline) && len(f.Calls()) < n {
		time.Sleep(20 * time.Millisecond)
	}
	return f.Calls()
}

type fakeAddr struct {
	Family int32
	Addr   []byte
}

type fakeDomain struct {
	Name        string
	RoutingOnly bool
}

func (f *fakeResolved) SetLinkDNS(ifindex int32, addrs []fakeAddr) *dbus.Error {
	var s []string
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.Addr)
		s = append(s, fmt.Sprintf("%d:%s", a.Family, ip))
	}
	return f.record("SetLinkDNS", ifindex, s)
}

func (f *fakeResolved) SetLinkDomains(ifindex int32, ds []fakeDomain) *dbus.Error {
	var s []string
	for _, d := range ds {
		s = append(s, d.Name+"="+strconv.FormatBool(d.RoutingOnly))
	}
	return f.record("SetLinkDomains", ifindex, s)
}

func (f *fakeResolved) SetLinkDefaultRoute(ifindex int32, on bool) *dbus.Error {
	return f.record("SetLinkDefaultRoute", ifindex, on)
}

func (f *fakeResolved) SetLinkDNSSEC(ifindex int32, mode string) *dbus.Error {
	return f.record("SetLinkDNSSEC", ifindex, mode)
}

func (f *fakeResolved) SetLinkLLMNR(ifindex int32, mode string) *dbus.Error {
	return f.record("SetLinkLLMNR", ifindex, mode)
}

func (f *fakeResolved) SetLinkMulticastDNS(ifindex int32, mode string) *dbus.Error {
	return f.record("SetLinkMulticastDNS", ifindex, mode)
}

func (f *fakeResolved) FlushCaches() *dbus.Error { return f.record("FlushCaches") }

func (f *fakeResolved) RevertLink(ifindex int32) *dbus.Error {
	return f.record("RevertLink", ifindex)
}

func wantApplied(ifindex int, dns string) []string {
	return []string{
		fmt.Sprintf("SetLinkDNS %d [%s]", ifindex, dns),
		fmt.Sprintf("SetLinkDomains %d [.=true]", ifindex),
		fmt.Sprintf("SetLinkDefaultRoute %d true", ifindex),
		fmt.Sprintf("SetLinkDNSSEC %d no", ifindex),
		fmt.Sprintf("SetLinkLLMNR %d no", ifindex),
		fmt.Sprintf("SetLinkMulticastDNS %d no", ifindex),
		"FlushCaches",
	}
}

func TestResolvedCallsAndRevert(t *testing.T) {
	bus := privateBus(t)
	fake := startFakeResolved(t, bus, "")
	log := slog.New(slog.DiscardHandler)
	rl, err := dialResolved(bus, true, log)
	if err != nil || rl == nil {
		t.Fatalf("dialResolved: %v, %v", rl, err)
	}
	defer rl.close()
	dns := []netip.Addr{netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("fc00::2")}
	if err := rl.apply(7, dns); err != nil {
		t.Fatal(err)
	}
	want := wantApplied(7, "2:198.18.0.2 10:fc00::2")
	if got := fake.Calls(); !slices.Equal(got, want) {
		t.Fatalf("calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// resolved restarts: a new owner of the name gets the settings again.
	fake.conn.Close()
	fake2 := startFakeResolved(t, bus, "")
	if got := fake2.waitCalls(len(want)); !slices.Equal(got, want) {
		t.Fatalf("after a restart of resolved, calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	if err := rl.revert(7); err != nil {
		t.Fatal(err)
	}
	if got := fake2.Calls(); got[len(got)-1] != "RevertLink 7" {
		t.Errorf("last call %q, want RevertLink 7", got[len(got)-1])
	}
}

func TestResolvedErrorsAreReported(t *testing.T) {
	bus := privateBus(t)
	startFakeResolved(t, bus, "SetLinkDomains")
	rl, err := dialResolved(bus, true, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer rl.close()
	err = rl.apply(3, []netip.Addr{netip.MustParseAddr("198.18.0.2")})
	if err == nil || !strings.Contains(err.Error(), "SetLinkDomains") || !strings.Contains(err.Error(), "refused by the fake") {
		t.Fatalf("apply: %v, want the SetLinkDomains failure", err)
	}
}

func TestResolvedAbsent(t *testing.T) {
	bus := privateBus(t)
	log := slog.New(slog.DiscardHandler)
	rl, err := dialResolved(bus, false, log)
	if err != nil || rl != nil {
		t.Fatalf("auto without resolved on the bus: %v, %v; want nothing to do", rl, err)
	}
	if _, err := dialResolved(bus, true, log); err == nil || !strings.Contains(err.Error(), "--dns-config none") {
		t.Fatalf("resolved required but absent: %v", err)
	}
}

// TestResolvedThroughInstall: a run sets the TUN's link in resolved and
// reverts it on exit.
func TestResolvedThroughInstall(t *testing.T) {
	tp := newTopo(t)
	bus := privateBus(t)
	fake := startFakeResolved(t, bus, "")
	cfg := autoRoute(false)
	cfg.DNSConfig, cfg.DBusAddress = DNSResolved, bus
	h := tp.startHelper(cfg)
	idx, err := strconv.Atoi(strings.Fields(tp.in(tp.host, "cat /sys/class/net/tsk0/ifindex"))[0])
	if err != nil {
		t.Fatal(err)
	}
	want := wantApplied(idx, "2:198.18.0.2")
	if got := fake.Calls(); !slices.Equal(got, want) {
		t.Fatalf("calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !strings.Contains(h.out.String(), fmt.Sprintf("systemd-resolved DNS of link %d", idx)) {
		t.Errorf("the startup block does not list the resolved change:\n%s", h.out.String())
	}
	h.stop()
	want = append(want, fmt.Sprintf("RevertLink %d", idx))
	if got := fake.Calls(); !slices.Equal(got, want) {
		t.Fatalf("after exit, calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
