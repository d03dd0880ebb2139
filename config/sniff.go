package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// SniffConfig is the top-level sniff keys: reading the name of a flow to a
// real (not fake) address from its first bytes (TLS server_name, HTTP Host,
// the ClientHello in a QUIC Initial), so that domain rules match it and the
// upstream is given the name.
type SniffConfig struct {
	// Mode: SniffAuto sniffs a flow when a domain rule could decide it
	// (one comes before the first rule its address matches), SniffOn
	// every flow, SniffOff none.
	Mode SniffMode `yaml:"sniff"`
	// Timeout bounds the wait for a TCP flow's first bytes, or a QUIC
	// flow's further Initials; a flow still nameless then goes by its
	// address.
	Timeout time.Duration `yaml:"sniff-timeout"`
	// OverrideDestination gives a proxied flow's upstream the sniffed
	// name (SOCKS ATYP domain, CONNECT host) instead of the address.
	OverrideDestination bool `yaml:"sniff-override-destination"`
	// Ports, when set, limits sniffing to flows to these destination ports.
	Ports []PortRange `yaml:"sniff-ports"`
	// CIDRs, when set, limits sniffing to flows to these destinations.
	CIDRs []netip.Prefix `yaml:"sniff-cidrs"`
	// ServerFirstPorts are TCP ports whose server speaks first (SSH,
	// SMTP...): never waited for, dialed at once by address.
	ServerFirstPorts []PortRange `yaml:"sniff-server-first-ports"`
}

// SniffMode says which flows are sniffed.
type SniffMode uint8

// Sniff modes; the zero value is SniffAuto.
const (
	SniffAuto SniffMode = iota
	SniffOn
	SniffOff
)

func (m SniffMode) String() string {
	switch m {
	case SniffOn:
		return "true"
	case SniffOff:
		return "false"
	}
	return "auto"
}

// ParseSniffMode reads auto, true (on, yes, all) or false (off, no).
func ParseSniffMode(s string) (SniffMode, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "auto", "":
		return SniffAuto, nil
	case "true", "on", "yes", "all":
		return SniffOn, nil
	case "false", "off", "no":
		return SniffOff, nil
	}
	return 0, fmt.Errorf("sniff %q: want auto (when a domain rule could match), true (every flow) or false", s)
}

// Sniff defaults and limits.
const (
	DefaultSniffTimeout = 300 * time.Millisecond
	MinSniffTimeout     = 10 * time.Millisecond
	MaxSniffTimeout     = 10 * time.Second
	// DefaultServerFirstPorts are protocols whose server speaks first:
	// FTP, SSH, telnet, SMTP, POP3, IMAP, submission, MySQL, VNC.
	DefaultServerFirstPorts = "21-23,25,110,143,587,3306,5900"
)

// PortRange is an inclusive range of ports.
type PortRange struct{ Lo, Hi uint16 }

func (r PortRange) String() string {
	if r.Lo == r.Hi {
		return strconv.Itoa(int(r.Lo))
	}
	return strconv.Itoa(int(r.Lo)) + "-" + strconv.Itoa(int(r.Hi))
}

// InPorts reports whether port is in one of rs.
func InPorts(rs []PortRange, port uint16) bool {
	for _, r := range rs {
		if r.Lo <= port && port <= r.Hi {
			return true
		}
	}
	return false
}

// ParsePorts reads ports and ranges separated by commas, slashes or spaces:
// "443", "80,443,8000-9000".
func ParsePorts(s string) ([]PortRange, error) {
	fields := strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '/' || r == ' ' || r == '\t' })
	if len(fields) == 0 {
		return nil, fmt.Errorf("%q: want ports like 443 or 80,443,8000-9000", s)
	}
	out := make([]PortRange, 0, len(fields))
	for _, f := range fields {
		lo, hi, isRange := strings.Cut(f, "-")
		a, err1 := strconv.ParseUint(lo, 10, 16)
		b, err2 := a, error(nil)
		if isRange {
			b, err2 = strconv.ParseUint(hi, 10, 16)
		}
		if err1 != nil || err2 != nil || a == 0 || b < a {
			return nil, fmt.Errorf("%q: want a port 1-65535 or a range like 8000-9000", f)
		}
		out = append(out, PortRange{uint16(a), uint16(b)})
	}
	return out, nil
}

func defaultSniff() SniffConfig {
	return SniffConfig{
		Mode:                SniffAuto,
		Timeout:             DefaultSniffTimeout,
		OverrideDestination: true,
		// DefaultServerFirstPorts, parsed (a test checks they agree).
		ServerFirstPorts: []PortRange{{21, 23}, {25, 25}, {110, 110}, {143, 143}, {587, 587}, {3306, 3306}, {5900, 5900}},
	}
}

// sniffFields are the decoder's handlers of the top-level sniff keys.
func (d *decoder) sniffFields() map[string]func(k, v *yaml.Node) {
	s := &d.c.Sniff
	ports := func(key string, dst *[]PortRange) func(k, v *yaml.Node) {
		return func(_, v *yaml.Node) {
			var out []PortRange
			bad := false
			d.strs(v, key, "ports like 443 or ranges like 8000-9000", func(_ int, str string, line int) {
				p, err := ParsePorts(str)
				if err != nil {
					bad = true
					d.failErr(line, err, "%s %v", key, err)
					return
				}
				out = append(out, p...)
			})
			if !bad {
				*dst = out
				d.c.setLine(key, deref(v).Line)
			}
		}
	}
	return map[string]func(k, v *yaml.Node){
		"sniff": func(_, v *yaml.Node) {
			str, ok := d.scalar(v, "sniff", "auto, true or false")
			if !ok {
				return
			}
			m, err := ParseSniffMode(str)
			if err != nil {
				d.failErr(deref(v).Line, err, "%v", err)
				return
			}
			s.Mode = m
			d.c.setLine("sniff", deref(v).Line)
		},
		"sniff-timeout": func(_, v *yaml.Node) { d.duration(v, "sniff-timeout", &s.Timeout, "sniff-timeout") },
		"sniff-override-destination": func(_, v *yaml.Node) {
			d.boolean(v, "sniff-override-destination", func(b bool) { s.OverrideDestination = b }, "sniff-override-destination")
		},
		"sniff-ports":              ports("sniff-ports", &s.Ports),
		"sniff-server-first-ports": ports("sniff-server-first-ports", &s.ServerFirstPorts),
		"sniff-cidrs": func(_, v *yaml.Node) {
			var out []netip.Prefix
			bad := false
			d.strs(v, "sniff-cidrs", "prefixes like 203.0.113.0/24", func(_ int, str string, line int) {
				p, err := netip.ParsePrefix(strings.TrimSpace(str))
				if err != nil {
					if a, aerr := netip.ParseAddr(strings.TrimSpace(str)); aerr == nil {
						p = netip.PrefixFrom(a, a.BitLen())
					} else {
						bad = true
						d.failErr(line, err, "sniff-cidrs %q: want a prefix like 203.0.113.0/24 or an address", str)
						return
					}
				}
				out = append(out, p.Masked())
			})
			if !bad {
				s.CIDRs = out
				d.c.setLine("sniff-cidrs", deref(v).Line)
			}
		},
	}
}

// sniff checks the sniff keys.
func (v *validator) sniff() {
	s := &v.c.Sniff
	if s.Mode > SniffOff {
		v.fail("sniff", "sniff %d: want auto, true or false", s.Mode)
	}
	if s.Timeout < MinSniffTimeout || s.Timeout > MaxSniffTimeout {
		v.fail("sniff-timeout", "sniff-timeout %v: want %v to %v (default %v)", s.Timeout, MinSniffTimeout, MaxSniffTimeout, DefaultSniffTimeout)
	}
	for _, key := range []string{"sniff-ports", "sniff-server-first-ports"} {
		rs := s.Ports
		if key == "sniff-server-first-ports" {
			rs = s.ServerFirstPorts
		}
		for _, r := range rs {
			if r.Lo == 0 || r.Hi < r.Lo {
				v.fail(key, "%s %s: want ports 1-65535, ranges low-high", key, r)
			}
		}
	}
	for _, p := range s.CIDRs {
		if !p.IsValid() {
			v.fail("sniff-cidrs", "sniff-cidrs: an invalid prefix; want prefixes like 203.0.113.0/24")
		}
	}
}
