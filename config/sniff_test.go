package config

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestSniffDefaults(t *testing.T) {
	s := Default().Sniff
	if s.Mode != SniffAuto || s.Timeout != DefaultSniffTimeout || !s.OverrideDestination || s.Ports != nil || s.CIDRs != nil {
		t.Fatalf("defaults: %+v", s)
	}
	want, err := ParsePorts(DefaultServerFirstPorts)
	if err != nil || !reflect.DeepEqual(s.ServerFirstPorts, want) {
		t.Fatalf("default server-first ports %v; DefaultServerFirstPorts parses to %v, %v", s.ServerFirstPorts, want, err)
	}
	for _, p := range []uint16{21, 22, 23, 25, 110, 143, 587} {
		if !InPorts(s.ServerFirstPorts, p) {
			t.Errorf("port %d is not server-first by default", p)
		}
	}
	if InPorts(s.ServerFirstPorts, 443) || InPorts(s.ServerFirstPorts, 80) {
		t.Error("443 or 80 is server-first by default")
	}
	// The example config shows the defaults.
	c, err := Parse([]byte(Example()), "example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.Sniff, s) {
		t.Fatalf("example's sniff keys %+v differ from the defaults %+v", c.Sniff, s)
	}
}

func TestSniffKeys(t *testing.T) {
	c, err := Parse([]byte(`sniff: true
sniff-timeout: 150ms
sniff-override-destination: false
sniff-ports: [443, "8000-8080", 80/8443]
sniff-cidrs: [203.0.113.0/24, 2001:db8::1]
sniff-server-first-ports: 2222
`), "s.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := c.Sniff
	want := SniffConfig{Mode: SniffOn, Timeout: 150 * time.Millisecond, OverrideDestination: false,
		Ports:            []PortRange{{443, 443}, {8000, 8080}, {80, 80}, {8443, 8443}},
		CIDRs:            []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("2001:db8::1/128")},
		ServerFirstPorts: []PortRange{{2222, 2222}}}
	if !reflect.DeepEqual(s, want) {
		t.Fatalf("got %+v\nwant %+v", s, want)
	}
	if c.Line("sniff-timeout") != 2 || c.Line("sniff-cidrs") != 5 {
		t.Fatalf("lines: %d %d", c.Line("sniff-timeout"), c.Line("sniff-cidrs"))
	}
	for in, want := range map[string]SniffMode{"sniff: auto": SniffAuto, "sniff: false": SniffOff, "sniff: off": SniffOff, "sniff: all": SniffOn} {
		c, err := Parse([]byte(in), "")
		if err != nil || c.Sniff.Mode != want {
			t.Errorf("%q: %v, %v", in, c, err)
		}
	}
}

func TestSniffErrors(t *testing.T) {
	const file = "s.yaml"
	for _, tc := range []struct{ src, want string }{
		{"\nsniff: sometimes", file + `:2: sniff "sometimes": want auto (when a domain rule could match), true (every flow) or false`},
		{"sniff: [a]", file + ":1: sniff: want auto, true or false, not a list"},
		{"sniff-timeout: 1ms", file + ":1: sniff-timeout 1ms: want 10ms to 10s (default 300ms)"},
		{"\n\nsniff-timeout: 1m", file + ":3: sniff-timeout 1m0s: want 10ms to 10s"},
		{"sniff-timeout: 3", file + ":1: sniff-timeout 3: want a duration with a unit"},
		{"sniff-override-destination: maybe", file + `:1: sniff-override-destination "maybe": want true or false`},
		{"sniff-ports:\n  - 443\n  - 0", file + `:3: sniff-ports "0": want a port 1-65535 or a range like 8000-9000`},
		{"sniff-ports: 90-80", file + `:1: sniff-ports "90-80": want a port 1-65535`},
		{"sniff-server-first-ports: [22, ssh]", file + `:1: sniff-server-first-ports "ssh": want a port`},
		{"sniff-cidrs: [10.0.0.0/33]", file + `:1: sniff-cidrs "10.0.0.0/33": want a prefix like 203.0.113.0/24 or an address`},
		{"snif: true", file + `:1: unknown key "snif"; did you mean "sniff"?`},
	} {
		_, err := Parse([]byte(tc.src), file)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v\nwant %s", tc.src, err, tc.want)
		}
	}
}
