package hostnet

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

var (
	servicePort  = netip.AddrPortFrom(service4, 80)
	excludedPort = netip.AddrPortFrom(excluded4, 80)
	devicePort   = netip.AddrPortFrom(deviceLAN, 80)
)

// services starts the listeners the tests dial: two on wan (one of them
// excluded), one on the device (a LAN destination).
func (tp *topo) services() {
	tp.listen(tp.wan, servicePort)
	tp.listen(tp.wan, excludedPort)
	tp.listen(tp.wan, netip.AddrPortFrom(service6, 80))
	tp.listen(tp.device, devicePort)
}

func autoRoute(killSwitch bool) Config {
	return Config{Options: Options{
		Mark: DefaultMark, AutoRoute: true, KillSwitch: killSwitch, LANAccess: true,
		Exclude: []netip.Prefix{netip.PrefixFrom(excluded4, 32)}, ExcludeUIDs: []UIDRange{{1234, 1234}},
		DNS: []netip.Addr{netip.MustParseAddr("198.18.0.2")},
	}}
}

// expectDirect dials addr from host and wants the service's greeting,
// seen from host's uplink address (not through the TUN).
func (tp *topo) expectDirect(addr netip.AddrPort, mark uint32) {
	tp.t.Helper()
	got, err := tp.dial(tp.host, addr, mark)
	if err != nil || !strings.HasPrefix(got, "hello from "+addr.String()) {
		tp.t.Fatalf("dial %s (mark %#x) should go direct: %q, %v", addr, mark, got, err)
	}
}

// expectCaptured dials addr from host and wants its SYN in the TUN.
func (tp *topo) expectCaptured(h *helper, addr netip.AddrPort) {
	tp.t.Helper()
	got, err := tp.dial(tp.host, addr, 0)
	if err == nil {
		tp.t.Fatalf("dial %s should have entered the TUN (where nothing answers), got %q", addr, got)
	}
	if !h.waitOutput("-> "+addr.String(), 2*time.Second) {
		tp.t.Fatalf("no SYN to %s in the TUN:\n%s", addr, h.out.String())
	}
}

func TestAutoRouteRuleBlockCaptureAndRemove(t *testing.T) {
	tp := newTopo(t)
	tp.services()
	base := tp.snapshot(tp.host)
	h := tp.startHelper(autoRoute(true))

	want4 := []string{
		"9100: from all fwmark 0x7473 lookup main",
		"9101: from all fwmark 0x7473 unreachable",
		"9102: from all to 203.0.113.20 lookup main",
		"9103: from all uidrange 1234-1234 lookup main",
		"9104: from all ipproto udp dport 53 lookup 29811",
		"9104: from all ipproto tcp dport 53 lookup 29811",
		"9105: from all ipproto udp dport 53 unreachable",
		"9105: from all ipproto tcp dport 53 unreachable",
		"9106: from all lookup main suppress_prefixlength 0",
		"9107: from all lookup 29811",
		"9108: from all unreachable",
	}
	if got := tp.ruleLines(false, 9000, 9200); !slices.Equal(got, want4) {
		t.Errorf("ip rule:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want4, "\n"))
	}
	want6 := slices.DeleteFunc(slices.Clone(want4), func(s string) bool { return strings.HasPrefix(s, "9102") })
	if got := tp.ruleLines(true, 9000, 9200); !slices.Equal(got, want6) {
		t.Errorf("ip -6 rule:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want6, "\n"))
	}
	for _, cmd := range []string{"ip route show table 29811", "ip -6 route show table 29811"} {
		if got := tp.in(tp.host, cmd); !strings.HasPrefix(got, "default dev tsk0") {
			t.Errorf("%s: %q, want only the default route via the TUN", cmd, got)
		}
	}

	tp.expectCaptured(h, servicePort)
	tp.expectCaptured(h, netip.AddrPortFrom(service6, 80))
	tp.expectDirect(excludedPort, 0)          // --exclude
	tp.expectDirect(servicePort, DefaultMark) // tunsocks' own sockets
	tp.expectDirect(devicePort, 0)            // --lan-access
	// DNS to a LAN resolver is captured too.
	if out, err := tp.try(tp.host, "dig +time=1 +tries=1 @192.168.50.2 example.test"); err == nil {
		t.Errorf("dig to the LAN resolver got an answer it should not have:\n%s", out)
	}
	if !h.waitOutput("-> 192.168.50.2:53", 2*time.Second) {
		t.Errorf("DNS to the LAN resolver did not enter the TUN:\n%s", h.out.String())
	}
	// DNS over TLS that would enter the TUN is reset at once (clients fall
	// back to plain DNS, which tunsocks answers).
	dot := netip.AddrPortFrom(service4, 853)
	if _, err := tp.dial(tp.host, dot, 0); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial %s: %v, want ECONNREFUSED (a RST from nftables)", dot, err)
	}
	if strings.Contains(h.out.String(), "-> "+dot.String()) {
		t.Errorf("the DoT SYN entered the TUN:\n%s", h.out.String())
	}
	if !strings.Contains(h.out.String(), "if tunsocks is killed, run: tunsocks cleanup --tun tsk0") {
		t.Errorf("startup block lacks the undo hint:\n%s", h.out.String())
	}

	// The healer's checks (every 2 s) find nothing to repair in what Install made.
	time.Sleep(2500 * time.Millisecond)
	if strings.Contains(h.out.String(), "put back") {
		t.Errorf("the healer repaired rules nobody deleted (listed rules do not compare equal to installed ones):\n%s", h.out.String())
	}
	h.stop()
	if got := tp.snapshot(tp.host); got != base {
		t.Errorf("after exit the host differs from before:\n--- before\n%s\n--- after\n%s", base, got)
	}
	tp.expectDirect(servicePort, 0)
}

// TestKillSwitchAfterSIGKILL: a killed run fails closed (ENETUNREACH at
// once, LAN and exclusions still work) until cleanup, which gives the
// host back exactly.
func TestKillSwitchAfterSIGKILL(t *testing.T) {
	tp := newTopo(t)
	tp.services()
	base := tp.snapshot(tp.host)
	h := tp.startHelper(autoRoute(true))
	h.kill()

	for _, dst := range []netip.AddrPort{servicePort, netip.AddrPortFrom(service6, 80)} {
		start := time.Now()
		_, err := tp.dial(tp.host, dst, 0)
		took := time.Since(start)
		if !errors.Is(err, syscall.ENETUNREACH) {
			t.Errorf("after SIGKILL with the kill switch, dial %s: %v, want ENETUNREACH", dst, err)
		}
		// The dial's own timeout (2 s) would have been an i/o timeout, not
		// ENETUNREACH: the error itself shows it failed at once.
		t.Logf("dial %s after SIGKILL failed in %v", dst, took)
	}
	if _, err := tp.try(tp.host, "dig +time=1 +tries=1 @192.168.50.2 example.test"); err == nil {
		t.Errorf("DNS to the LAN resolver leaked after SIGKILL with the kill switch")
	}
	tp.expectDirect(devicePort, 0)
	tp.expectDirect(excludedPort, 0)
	tp.expectDirect(servicePort, DefaultMark)

	out := tp.cleanup("tsk0")
	if !strings.Contains(out, fmt.Sprintf("CLEANED pid %d tun tsk0", h.pid())) {
		t.Errorf("cleanup did not report the dead run:\n%s", out)
	}
	if got := tp.snapshot(tp.host); got != base {
		t.Errorf("after cleanup the host differs from before:\n--- before\n%s\n--- after\n%s", base, got)
	}
	tp.expectDirect(servicePort, 0)
}

// TestNoKillSwitchFailsOpenAndNextRunCleans: without the kill switch a
// killed run leaves harmless rules (traffic goes direct at once); the next
// run removes them first and says so.
func TestNoKillSwitchFailsOpenAndNextRunCleans(t *testing.T) {
	tp := newTopo(t)
	tp.services()
	base := tp.snapshot(tp.host)
	h := tp.startHelper(autoRoute(false))
	dead := h.pid()
	h.kill()
	tp.expectDirect(servicePort, 0)

	h2 := tp.startHelper(autoRoute(false))
	if !strings.Contains(h2.out.String(), fmt.Sprintf("removed leftovers of crashed run, pid %d", dead)) {
		t.Errorf("the next run did not report removing the leftovers:\n%s", h2.out.String())
	}
	lines := tp.ruleLines(false, 9000, 9200)
	if len(lines) != len(slices.Compact(slices.Clone(lines))) {
		t.Errorf("duplicate rules after a restart:\n%s", strings.Join(lines, "\n"))
	}
	tp.expectCaptured(h2, servicePort)
	h2.stop()
	if got := tp.snapshot(tp.host); got != base {
		t.Errorf("after exit the host differs from before:\n--- before\n%s\n--- after\n%s", base, got)
	}
}

func TestLiveOwnerRefused(t *testing.T) {
	tp := newTopo(t)
	h := tp.startHelper(autoRoute(false))
	h2, err := tp.tryHelper(autoRoute(false))
	if err == nil {
		t.Fatalf("a second run with the same TUN started")
	}
	if want := fmt.Sprintf("tunsocks pid %d is running with TUN tsk0", h.pid()); !strings.Contains(h2.out.String(), want) {
		t.Errorf("second run's error does not name the live owner (%q):\n%s", want, h2.out.String())
	}
	cfg := autoRoute(false)
	cfg.Tun = "tsk1"
	h3, err := tp.tryHelper(cfg)
	if err == nil || !strings.Contains(h3.out.String(), "already uses") {
		t.Errorf("a run on another TUN with the same table started: %v\n%s", err, h3.out.String())
	}
	h.stop()
}

func TestSelfHealing(t *testing.T) {
	tp := newTopo(t)
	h := tp.startHelper(autoRoute(true))
	for _, cmd := range []string{"ip rule del pref 9107", "ip -6 rule del pref 9100", "ip route flush table 29811", "nft flush ruleset"} {
		tp.in(tp.host, cmd)
		start := time.Now()
		for time.Since(start) < 5*time.Second {
			if len(tp.ruleLines(false, 9107, 9107)) == 1 && len(tp.ruleLines(true, 9100, 9100)) == 1 &&
				strings.HasPrefix(tp.in(tp.host, "ip route show table 29811"), "default dev tsk0") &&
				strings.Contains(tp.in(tp.host, "nft list tables"), "table inet tunsocks-tsk0") {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("%q repaired after %v", cmd, time.Since(start).Round(time.Millisecond))
		if time.Since(start) >= 5*time.Second {
			t.Fatalf("%q was not repaired:\n%s", cmd, h.out.String())
		}
	}
	if !strings.Contains(h.out.String(), "ManageForeignRoutingPolicyRules=no") {
		t.Errorf("no warning with the networkd hint:\n%s", h.out.String())
	}
	h.stop()
}
