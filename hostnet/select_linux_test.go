package hostnet

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestIncludeCgroupAndUID: with --include-cgroup and --include-uid only
// those sockets enter the TUN; another process in the same namespace goes
// direct.
func TestIncludeCgroupAndUID(t *testing.T) {
	tp := newTopo(t)
	tp.services()
	cg, rel := testCgroup(t, "inc")
	base := tp.snapshot(tp.host)
	cfg := Config{Options: Options{Mark: DefaultMark, AutoRoute: true, LANAccess: true, IncludeUIDs: []UIDRange{{65534, 65534}}},
		IncludeCgroupPaths: []string{"/" + rel}}
	h := tp.startHelper(cfg)

	rules := tp.ruleLines(false, 9100, 9110)
	for _, want := range []string{
		"9104: from all fwmark 0x7474 ipproto udp dport 53 lookup 29811",
		"9104: from all uidrange 65534-65534 ipproto udp dport 53 lookup 29811",
		"9106: from all fwmark 0x7474 lookup main suppress_prefixlength 0",
		"9107: from all fwmark 0x7474 lookup 29811",
		"9107: from all uidrange 65534-65534 lookup 29811",
	} {
		if !slices.Contains(rules, want) {
			t.Errorf("rule %q missing:\n%s", want, strings.Join(rules, "\n"))
		}
	}
	if slices.Contains(rules, "9107: from all lookup 29811") {
		t.Errorf("everything is captured, not just the included:\n%s", strings.Join(rules, "\n"))
	}

	// Outside the cgroup, as root: direct.
	out, err := tp.dialAs(tp.host, "", -1, servicePort)
	if err != nil || !strings.HasPrefix(out, "hello from "+servicePort.String()) {
		t.Fatalf("a process outside the cgroup did not go direct: %q %v", out, err)
	}
	// Inside: into the TUN.
	out, err = tp.dialAs(tp.host, cg, -1, servicePort)
	if err == nil {
		t.Fatalf("a process in the included cgroup reached the service directly: %q", out)
	}
	if !h.waitOutput("-> "+servicePort.String(), 2*time.Second) {
		t.Fatalf("no SYN from the included cgroup in the TUN:\n%s", h.out.String())
	}
	// The included uid, outside the cgroup: into the TUN too.
	uidDst := netip.AddrPortFrom(service6, 80)
	out, err = tp.dialAs(tp.host, "", 65534, uidDst)
	if err == nil {
		t.Fatalf("uid 65534 reached the service directly: %q", out)
	}
	if !h.waitOutput("-> "+uidDst.String(), 2*time.Second) {
		t.Fatalf("no SYN from uid 65534 in the TUN:\n%s", h.out.String())
	}
	h.stop()
	if got := tp.snapshot(tp.host); got != base {
		t.Errorf("after exit the host differs from before:\n--- before\n%s\n--- after\n%s", base, got)
	}
}

// TestGatewayWithForwardDrop: devices that use the host as their gateway
// get their traffic and DNS into the TUN, through a FORWARD DROP policy
// such as Docker's; afterwards sysctls, rules and that chain are as before.
func TestGatewayWithForwardDrop(t *testing.T) {
	tp := newTopo(t)
	tp.services()
	tp.in(tp.host, "nft add table ip filter")
	tp.in(tp.host, "nft add chain ip filter FORWARD { type filter hook forward priority 0 ; policy drop ; }")
	base := tp.snapshot(tp.host)
	cfg := Config{Options: Options{Mark: DefaultMark, Gateway: "lan0", LANAccess: true, DNS: []netip.Addr{netip.MustParseAddr("198.18.0.2")}}}
	h := tp.startHelper(cfg)

	if got := strings.TrimSpace(tp.in(tp.host, "cat /proc/sys/net/ipv4/ip_forward")); got != "1" {
		t.Errorf("ip_forward = %s during gateway mode", got)
	}
	fwd := tp.in(tp.host, "nft list chain ip filter FORWARD")
	for _, want := range []string{`iifname "lan0" oifname "tsk0" accept`, `iifname "tsk0" oifname "lan0" accept`} {
		if !strings.Contains(fwd, want) {
			t.Errorf("FORWARD lacks %q:\n%s", want, fwd)
		}
	}
	out, err := tp.dialAs(tp.device, "", -1, servicePort)
	if err == nil {
		t.Fatalf("the device reached the service without the TUN: %q", out)
	}
	if !h.waitOutput(fmt.Sprintf("TUN tcp %s:", deviceLAN), 2*time.Second) || !h.waitOutput("-> "+servicePort.String(), time.Second) {
		t.Fatalf("the device's SYN did not enter the TUN:\n%s", h.out.String())
	}
	// DNS to the host's LAN address is answered by tunsocks' DNS.
	tp.try(tp.device, "dig +time=1 +tries=1 @192.168.50.1 name.test")
	if !h.waitOutput("-> 198.18.0.2:53", 2*time.Second) {
		t.Fatalf("the device's DNS did not reach tunsocks' DNS address:\n%s", h.out.String())
	}
	// The host's own traffic is not captured without --auto-route.
	tp.expectDirect(servicePort, 0)
	if !strings.Contains(h.out.String(), "nftables accept rules in ip filter FORWARD") {
		t.Errorf("the startup block does not list the accept rules:\n%s", h.out.String())
	}
	// The firewall is reloaded (the chain flushed), and another firewall
	// with a DROP forward policy starts later: the accept rules are put
	// back, and added to the new chain, recorded in the state file first.
	tp.in(tp.host, "nft flush chain ip filter FORWARD")
	tp.in(tp.host, "nft add table ip6 docker2")
	tp.in(tp.host, "nft add chain ip6 docker2 FORWARD { type filter hook forward priority 0 ; policy drop ; }")
	deadline := time.Now().Add(20 * time.Second) // the healer looks every 2 s; only a failure waits this out
	for time.Now().Before(deadline) && (!strings.Contains(tp.in(tp.host, "nft list chain ip filter FORWARD"), `oifname "tsk0" accept`) ||
		!strings.Contains(tp.in(tp.host, "nft list chain ip6 docker2 FORWARD"), `oifname "tsk0" accept`)) {
		time.Sleep(50 * time.Millisecond)
	}
	for _, ch := range []string{"ip filter FORWARD", "ip6 docker2 FORWARD"} {
		if got := tp.in(tp.host, "nft list chain "+ch); strings.Count(got, `accept comment "tunsocks tsk0"`) != 2 {
			t.Errorf("%s after a reload / a late firewall: want the two accept rules:\n%s", ch, got)
		}
	}
	h.stop()
	if got := tp.in(tp.host, "nft list chain ip6 docker2 FORWARD"); strings.Contains(got, "tsk0") {
		t.Errorf("accept rules left in the late chain:\n%s", got)
	}
	tp.in(tp.host, "nft delete table ip6 docker2")
	if got := tp.snapshot(tp.host); got != base {
		t.Errorf("after exit the host differs from before:\n--- before\n%s\n--- after\n%s", base, got)
	}
}

// TestLocalUpstreamExclusion: a proxy on 127.0.0.1 served by another user
// is excluded by uid; one served by root in the root cgroup is refused
// with the fix; one in a cgroup of its own is excluded by cgroup.
func TestLocalUpstreamExclusion(t *testing.T) {
	tp := newTopo(t)
	up := netip.MustParseAddrPort("127.0.0.1:1081")
	tp.listenAs(tp.host, "", 65534, up)
	cfg := autoRoute(false)
	cfg.Upstreams = []netip.AddrPort{up}
	h := tp.startHelper(cfg)
	if !slices.Contains(tp.ruleLines(false, 9103, 9103), "9103: from all uidrange 65534-65534 lookup main") {
		t.Errorf("the local upstream's uid is not excluded:\n%s", strings.Join(tp.ruleLines(false, 9100, 9110), "\n"))
	}
	if !strings.Contains(h.out.String(), "local upstream 127.0.0.1:1081 is served by pid") {
		t.Errorf("no word about the local upstream:\n%s", h.out.String())
	}
	h.stop()

	rootUp := netip.MustParseAddrPort("127.0.0.1:1082")
	mnt, err := cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	tp.listenAs(tp.host, mnt, -1, rootUp) // root, in the root cgroup
	cfg.Upstreams = []netip.AddrPort{rootUp}
	if h, err := tp.tryHelper(cfg); err == nil || !strings.Contains(h.out.String(), "--exclude-uid 0") {
		t.Errorf("a root upstream in the root cgroup was accepted, or the fix not named: %v\n%s", err, h.out.String())
	}

	cg, _ := testCgroup(t, "up")
	cgUp := netip.MustParseAddrPort("127.0.0.1:1083")
	tp.listenAs(tp.host, cg, -1, cgUp)
	cfg.Upstreams = []netip.AddrPort{cgUp}
	h = tp.startHelper(cfg)
	if nft := tp.in(tp.host, "nft list table inet tunsocks-tsk0"); !strings.Contains(nft, "socket cgroupv2 level 1") {
		t.Errorf("no cgroup exclusion for a root upstream in its own cgroup:\n%s", nft)
	}
	h.stop()

	cfg.Upstreams = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:1084")}
	h, err = tp.tryHelper(cfg)
	if err == nil || !strings.Contains(h.out.String(), "nothing listens there") {
		t.Errorf("an upstream nobody serves was accepted: %v\n%s", err, h.out.String())
	}
}

// TestIncludeCgroupUnderIPNetnsExec: under ip netns exec, whose /sys has no
// cgroup mounts, the cgroup is still found (cgroup2 mounted for the moment
// in the private mount namespace) and its sockets are captured.
func TestIncludeCgroupUnderIPNetnsExec(t *testing.T) {
	tp := newTopo(t)
	tp.services()
	cg, rel := testCgroup(t, "ipx")
	tp.ipNetnsExec = true
	h := tp.startHelper(Config{Options: Options{Mark: DefaultMark, AutoRoute: true}, IncludeCgroupPaths: []string{"/" + rel}})
	if nft := tp.in(tp.host, "nft list table inet tunsocks-tsk0"); !strings.Contains(nft, "socket cgroupv2 level 1") {
		t.Errorf("no cgroup rule:\n%s", nft)
	}
	if out, err := tp.dialAs(tp.host, cg, -1, servicePort); err == nil {
		t.Fatalf("a process in the included cgroup reached the service directly: %q", out)
	}
	if !h.waitOutput("-> "+servicePort.String(), 2*time.Second) {
		t.Fatalf("no SYN from the included cgroup in the TUN:\n%s", h.out.String())
	}
	h.stop()
}
