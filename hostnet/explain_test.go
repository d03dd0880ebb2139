package hostnet

import (
	"net/netip"
	"strings"
	"testing"
)

func TestExplain(t *testing.T) {
	o := Options{Tun: "ts0", TunAddrs: tunAddrs("198.18.0.1/15", "fc00::1/18"), Mark: DefaultMark, AutoRoute: true, KillSwitch: true, LANAccess: true,
		Exclude: []netip.Prefix{netip.MustParsePrefix("203.0.113.20/32")}, ExcludeUIDs: []UIDRange{{1234, 1234}}}
	s := &State{Tun: "ts0", Rules: o.Rules()}
	lan := netip.MustParsePrefix("192.168.50.0/24")
	withDefault := func(dst netip.Addr) (netip.Prefix, string, bool) {
		if lan.Contains(dst) {
			return lan, "192.168.50.0/24 dev lan0", true
		}
		if dst.Is4() {
			return netip.MustParsePrefix("0.0.0.0/0"), "0.0.0.0/0 via 192.0.2.1 dev up0", true
		}
		return netip.Prefix{}, "", false
	}
	noDefault := func(dst netip.Addr) (netip.Prefix, string, bool) {
		if lan.Contains(dst) {
			return lan, "192.168.50.0/24 dev lan0", true
		}
		return netip.Prefix{}, "", false
	}
	for _, c := range []struct {
		flow  Flow
		main  RouteLookup
		tunUp bool
		want  string // prefix of Verdict.String()
	}{
		{Flow{Network: "tcp", Dst: netip.MustParseAddrPort("203.0.113.10:80"), UID: 1000}, withDefault, true, "rule 9107: lookup 29811 (capture: into the TUN): proxied"},
		{Flow{Network: "tcp", Dst: netip.MustParseAddrPort("[2001:db8::1]:443"), UID: 1000}, withDefault, true, "rule 9107: [v6] lookup 29811"},
		{Flow{Network: "udp", Dst: netip.MustParseAddrPort("192.168.50.2:53"), UID: 1000}, withDefault, true, "rule 9104: ipproto udp dport 53 lookup 29811"},
		{Flow{Network: "tcp", Dst: netip.MustParseAddrPort("192.168.50.2:80"), UID: 1000}, withDefault, true, "rule 9106: lookup main suppress_prefixlength 0 (--lan-access: non-default routes of main (LAN, bridges) stay direct): direct, route 192.168.50.0/24 dev lan0"},
		{Flow{Network: "tcp", Dst: netip.MustParseAddrPort("203.0.113.20:80"), UID: 1000}, withDefault, true, "rule 9102: to 203.0.113.20/32 lookup main (--exclude: direct): direct, route 0.0.0.0/0 via 192.0.2.1"},
		{Flow{Network: "tcp", Dst: netip.MustParseAddrPort("203.0.113.10:80"), UID: 1234}, withDefault, true, "rule 9103: uidrange 1234-1234 lookup main"},
		{Flow{Network: "tcp", Dst: netip.MustParseAddrPort("203.0.113.10:80"), Mark: DefaultMark}, withDefault, true, "rule 9100: fwmark 0x7473 lookup main"},
		{Flow{Network: "tcp", Dst: netip.MustParseAddrPort("203.0.113.10:80"), Mark: DefaultMark}, noDefault, true, "rule 9101: fwmark 0x7473 unreachable"},
		{Flow{Network: "tcp", Dst: netip.MustParseAddrPort("203.0.113.10:80")}, withDefault, false, "rule 9108: unreachable (--kill-switch"},
		{Flow{Network: "udp", Dst: netip.MustParseAddrPort("192.168.50.2:53")}, withDefault, false, "rule 9105: ipproto udp dport 53 unreachable"},
	} {
		got := Explain(s, c.flow, c.main, c.tunUp).String()
		if !strings.HasPrefix(got, c.want) {
			t.Errorf("%+v (tun up %v):\n got %s\nwant %s...", c.flow, c.tunUp, got, c.want)
		}
	}
	// Without the kill switch and with the TUN gone, traffic falls through to main.
	o.KillSwitch = false
	s = &State{Tun: "ts0", Rules: o.Rules()}
	if got := Explain(s, Flow{Network: "tcp", Dst: netip.MustParseAddrPort("203.0.113.10:80")}, withDefault, false).String(); !strings.HasPrefix(got, "no tunsocks rule catches it: direct") {
		t.Errorf("fail-open after a crash: %s", got)
	}
}
