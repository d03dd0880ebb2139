package hostnet

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func tunAddrs(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, a := range s {
		out = append(out, netip.MustParsePrefix(a))
	}
	return out
}

func ruleStrings(rs []Rule) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.String())
	}
	return out
}

func TestRulesAutoRouteWithKillSwitch(t *testing.T) {
	o := Options{Tun: "ts0", TunAddrs: tunAddrs("198.18.0.1/15", "fc00::1/18"), Mark: DefaultMark, AutoRoute: true, KillSwitch: true, LANAccess: true,
		Exclude: []netip.Prefix{netip.MustParsePrefix("10.1.2.3/8"), netip.MustParsePrefix("2001:db8::/32")}, ExcludeUIDs: []UIDRange{{1000, 1999}}}
	if err := o.Check(); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"9100: fwmark 0x7473 lookup main",
		"9101: fwmark 0x7473 unreachable",
		"9102: to 10.0.0.0/8 lookup main",
		"9103: uidrange 1000-1999 lookup main",
		"9104: ipproto udp dport 53 lookup 29811",
		"9104: ipproto tcp dport 53 lookup 29811",
		"9105: ipproto udp dport 53 unreachable",
		"9105: ipproto tcp dport 53 unreachable",
		"9106: lookup main suppress_prefixlength 0",
		"9107: lookup 29811",
		"9108: unreachable",
		"9100: [v6] fwmark 0x7473 lookup main",
		"9101: [v6] fwmark 0x7473 unreachable",
		"9102: [v6] to 2001:db8::/32 lookup main",
		"9103: [v6] uidrange 1000-1999 lookup main",
		"9104: [v6] ipproto udp dport 53 lookup 29811",
		"9104: [v6] ipproto tcp dport 53 lookup 29811",
		"9105: [v6] ipproto udp dport 53 unreachable",
		"9105: [v6] ipproto tcp dport 53 unreachable",
		"9106: [v6] lookup main suppress_prefixlength 0",
		"9107: [v6] lookup 29811",
		"9108: [v6] unreachable",
	}
	if got := ruleStrings(o.Rules()); !reflect.DeepEqual(got, want) {
		t.Errorf("rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := len(o.Routes()); got != 2 {
		t.Errorf("%d routes, want the v4 and v6 default", got)
	}
}

// A TUN without IPv6 gets no v6 capture, but v6 is made unreachable
// rather than left to leak; without the kill switch and LAN access the
// block is shorter, and priority and table move as asked.
func TestRulesV4OnlyTunAndOptions(t *testing.T) {
	o := Options{Tun: "ts0", TunAddrs: tunAddrs("10.9.0.1/24"), Mark: 0x100, AutoRoute: true, Priority: 500, Table: 77}
	want := []string{
		"500: fwmark 0x100 lookup main",
		"501: fwmark 0x100 unreachable",
		"504: ipproto udp dport 53 lookup 77",
		"504: ipproto tcp dport 53 lookup 77",
		"507: lookup 77",
		"500: [v6] fwmark 0x100 lookup main",
		"501: [v6] fwmark 0x100 unreachable",
		"507: [v6] unreachable",
	}
	if got := ruleStrings(o.Rules()); !reflect.DeepEqual(got, want) {
		t.Errorf("rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if rs := o.Routes(); len(rs) != 1 || rs[0].Family != 4 || rs[0].Table != 77 {
		t.Errorf("routes %+v, want only the v4 default in table 77", rs)
	}
}

func TestRulesIncludeAndGatewaySelectors(t *testing.T) {
	o := Options{Tun: "ts0", TunAddrs: tunAddrs("198.18.0.1/15"), Mark: DefaultMark, AutoRoute: true, Gateway: "eth1",
		IncludeCgroups: []Cgroup{{Path: "a.slice", ID: 42, Level: 1}}, IncludeUIDs: []UIDRange{{1000, 1000}}}
	var got []string
	for _, r := range o.Rules() {
		if r.Family == 4 && r.Priority == 9107 {
			got = append(got, r.String())
		}
	}
	want := []string{"9107: fwmark 0x7474 lookup 29811", "9107: uidrange 1000-1000 lookup 29811", "9107: iif eth1 lookup 29811"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("capture rules %q, want %q", got, want)
	}
}

func TestOptionsCheck(t *testing.T) {
	ok := Options{Tun: "ts0", TunAddrs: tunAddrs("198.18.0.1/15"), Mark: DefaultMark, AutoRoute: true}
	for _, c := range []struct {
		name string
		mod  func(*Options)
		want string
	}{
		{"no mark", func(o *Options) { o.Mark = 0 }, "--fwmark 0"},
		{"main table", func(o *Options) { o.Table = 254 }, "--route-table 254"},
		{"priority too high", func(o *Options) { o.Priority = 32760 }, "--rule-priority 32760"},
		{"nothing to route", func(o *Options) { o.AutoRoute = false }, "--auto-route or --gateway"},
		{"include without auto-route", func(o *Options) { o.AutoRoute, o.Gateway, o.IncludeUIDs = false, "eth1", []UIDRange{{1, 1}} }, "add --auto-route"},
		{"gateway is the TUN", func(o *Options) { o.Gateway = "ts0" }, "that is the TUN itself"},
		{"no address", func(o *Options) { o.TunAddrs = nil }, "--tun-addr"},
	} {
		o := ok
		c.mod(&o)
		if err := o.Check(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error naming %q", c.name, err, c.want)
		}
	}
	if err := ok.Check(); err != nil {
		t.Errorf("valid options: %v", err)
	}
}

func TestParseUIDRange(t *testing.T) {
	for in, want := range map[string]UIDRange{"1000": {1000, 1000}, "1000-1999": {1000, 1999}, " 0 ": {0, 0}} {
		if got, err := ParseUIDRange(in); err != nil || got != want {
			t.Errorf("ParseUIDRange(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "5-3", "1-", "-1", "4294967296"} {
		if _, err := ParseUIDRange(bad); err == nil {
			t.Errorf("ParseUIDRange(%q) accepted", bad)
		}
	}
}

func TestStateFileRoundTripAndNaming(t *testing.T) {
	dir := t.TempDir()
	if got := statePath(dir, "ts0", "net:[111]", "net:[111]"); got != filepath.Join(dir, "ts0.json") {
		t.Errorf("state path in the init namespace: %s", got)
	}
	if got := statePath(dir, "ts0", "net:[222]", "net:[111]"); got != filepath.Join(dir, "ts0@222.json") {
		t.Errorf("state path in another namespace: %s", got)
	}
	o := Options{Tun: "ts0", TunAddrs: tunAddrs("198.18.0.1/15"), Mark: DefaultMark, AutoRoute: true, KillSwitch: true, ExcludeUIDs: []UIDRange{{7, 9}}}
	s := &State{Version: stateVersion, PID: 42, StartTime: 99, Netns: "net:[1]", Tun: "ts0", Rules: o.Rules(), Routes: o.Routes(), NftTable: o.NftTable(),
		Sysctls: []Sysctl{{Path: "net/ipv4/ip_forward", Old: "0", New: "1"}}, ResolvedIfindex: 5}
	p := filepath.Join(dir, "ts0.json")
	if err := writeState(p, s); err != nil {
		t.Fatal(err)
	}
	got, err := readState(p)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, s) {
		t.Errorf("read back %+v\nwrote %+v", got, s)
	}
	block := Block(got)
	for _, want := range []string{"rule 9108: unreachable", "nftables table inet tunsocks-ts0", "sysctl net.ipv4.ip_forward = 1 (was 0)", "tunsocks cleanup --tun ts0"} {
		if !strings.Contains(block, want) {
			t.Errorf("startup block lacks %q:\n%s", want, block)
		}
	}
	if err := os.WriteFile(p, []byte(`{"version": 99}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readState(p); err == nil {
		t.Error("a state file of another version was accepted")
	}
	if s, err := readState(filepath.Join(dir, "none.json")); s != nil || err != nil {
		t.Errorf("missing state file: %v, %v", s, err)
	}
}
