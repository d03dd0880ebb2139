package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/tunsocks/tunsocks/hostnet"
	"github.com/tunsocks/tunsocks/internal/suggest"
	"github.com/tunsocks/tunsocks/rules"
)

// Load reads the YAML file at path, decodes it, applies overrides (the
// flags a user set) and validates the result once. On any problem it
// returns no Config and an error listing every problem found (up to 20),
// each naming the file and line.
func Load(path string, overrides ...func(*Config) error) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, &Error{File: path, Msg: "read failed: " + err.Error(), Err: err}
	}
	if len(data) > maxFileSize {
		return nil, &Error{File: path, Msg: fmt.Sprintf("file larger than %d bytes; is it the right file?", maxFileSize)}
	}
	return Parse(data, path, overrides...)
}

// Parse decodes a YAML config, applies overrides and validates the result
// once. path names the file in errors and is the base of relative RULE-SET
// paths ("" for none: errors then say "config", RULE-SET paths are
// relative to the working directory). Keys the file leaves out keep their
// defaults (see Default).
func Parse(data []byte, path string, overrides ...func(*Config) error) (*Config, error) {
	c := Default()
	c.Path = path
	d := &decoder{file: displayName(path), c: c}
	d.document(data)
	// Decoding errors come first; cross-checks still run so that one run
	// reports as much as possible. A value that failed to decode kept its
	// default, so Validate does not report it twice.
	errs := d.errs
	for _, o := range overrides {
		if err := o(c); err != nil {
			errs = append(errs, err)
		}
	}
	if err := c.Validate(); err != nil {
		errs = append(errs, flatten(err)...)
	}
	if len(errs) > 0 {
		return nil, joinCapped(errs)
	}
	return c, nil
}

func displayName(path string) string {
	if path == "" {
		return "config"
	}
	return path
}

// flatten returns the errors inside an errors.Join, or err alone.
func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

func joinCapped(errs []error) error {
	if len(errs) > maxErrors {
		errs = append(errs[:maxErrors:maxErrors], fmt.Errorf("too many errors (%d); stopped", len(errs)))
	}
	return errors.Join(errs...)
}

type decoder struct {
	file string
	c    *Config
	errs []error
}

func (d *decoder) fail(line int, format string, args ...any) {
	d.failErr(line, nil, format, args...)
}

func (d *decoder) failErr(line int, err error, format string, args ...any) {
	if len(d.errs) > maxErrors {
		return
	}
	d.errs = append(d.errs, &Error{File: d.file, Line: line, Msg: fmt.Sprintf(format, args...), Err: err})
}

// document decodes the single YAML document in data.
func (d *decoder) document(data []byte) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if err == io.EOF { // empty file: all defaults
			return
		}
		d.syntaxError(err)
		return
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == io.EOF:
	case err != nil:
		d.syntaxError(err)
		return
	default:
		d.fail(next.Line, "a second YAML document (after ---) is not supported; put everything in one document")
		return
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return
		}
		root = root.Content[0]
	}
	root = deref(root)
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return // a file holding only comments
	}
	d.top(root)
}

// syntaxError turns "yaml: line 3: msg" into "file:3: msg".
func (d *decoder) syntaxError(err error) {
	msg := err.Error()
	rest, ok := strings.CutPrefix(msg, "yaml: line ")
	if ok {
		num, text, ok2 := strings.Cut(rest, ": ")
		if n, err2 := strconv.Atoi(num); ok2 && err2 == nil {
			d.failErr(n, err, "YAML syntax: %s", text)
			return
		}
	}
	d.failErr(0, err, "YAML syntax: %s", strings.TrimPrefix(msg, "yaml: "))
}

// deref follows aliases (*name) to the anchored node.
func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 16; i++ {
		n = n.Alias
	}
	return n
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "list"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "empty value"
		}
		return "single value"
	}
	return "YAML node"
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

// topHints are keys that are not ours but that people bring from Clash
// configs or from the flags, with what to write instead.
func topHints() map[string]string {
	return map[string]string{
		"tun-fd":              `write it under tun: as "fd"`,
		"tun-addr":            `write it under tun: as "addrs" (a list)`,
		"mtu":                 `write it under tun: as "mtu"`,
		"offload":             `write it under tun: as "offload"`,
		"pcap":                `write it under tun: as "pcap"`,
		"proxy-groups":        "proxy groups are not supported; an entry in proxies with chain: [a, b] reaches b through a",
		"proxy-providers":     "proxy providers are not supported; list the upstreams under proxies",
		"rule-providers":      "rule providers are not supported; write RULE-SET,path/to/file,TARGET in rules",
		"mode":                "a Clash setting tunsocks does not use: rules apply when rules: is given",
		"port":                "a Clash setting tunsocks does not use; `tunsocks server` is the SOCKS server",
		"socks-port":          "a Clash setting tunsocks does not use; `tunsocks server` is the SOCKS server",
		"mixed-port":          "a Clash setting tunsocks does not use; `tunsocks server` is the SOCKS server",
		"log-level":           "set it with the --log-level flag",
		"allow-lan":           "a Clash setting tunsocks does not use",
		"external-controller": `write it under api: as "listen" (the Clash-compatible API)`,
		"secret":              `write it under api: as "secret"`,
		"external-ui":         "the page is built in: /ui/ on the api: listen address",
	}
}

// mapping walks the keys of a mapping node, calling fields[key] for each
// and reporting unknown and repeated keys.
func (d *decoder) mapping(n *yaml.Node, section string, fields map[string]func(k, v *yaml.Node), hints map[string]string) {
	n = deref(n)
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		if section == "" {
			d.fail(n.Line, "the file must be a mapping of keys (proxy:, tun:, rules:, ...), not a %s", kindName(n))
		} else {
			d.fail(n.Line, "%s: want a mapping of keys, not a %s", section, kindName(n))
		}
		return
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.fail(k.Line, "%s: a key must be a plain name, not a %s", sectionName(section), kindName(k))
			continue
		}
		key := k.Value
		if key == "<<" {
			d.fail(k.Line, "merge keys (<<) are not supported; write the keys out")
			continue
		}
		if first, dup := seen[key]; dup {
			d.fail(k.Line, "key %q repeated%s (first at line %d); keep one", key, inSection(section), first)
			continue
		}
		seen[key] = k.Line
		f, ok := fields[key]
		if !ok {
			d.unknownKey(k, section, fields, hints)
			continue
		}
		f(k, v)
	}
}

func sectionName(section string) string {
	if section == "" {
		return "top level"
	}
	return section
}

func inSection(section string) string {
	if section == "" {
		return ""
	}
	return " in " + section
}

func (d *decoder) unknownKey(k *yaml.Node, section string, fields map[string]func(k, v *yaml.Node), hints map[string]string) {
	if h, ok := hints[k.Value]; ok {
		d.fail(k.Line, "unknown key %q%s; %s", k.Value, inSection(section), h)
		return
	}
	names := make([]string, 0, len(fields))
	for name := range fields {
		names = append(names, name)
	}
	sort.Strings(names)
	if s := closest(k.Value, names); s != "" {
		d.fail(k.Line, "unknown key %q%s; did you mean %q?", k.Value, inSection(section), s)
		return
	}
	d.fail(k.Line, "unknown key %q%s; known keys: %s", k.Value, inSection(section), strings.Join(names, ", "))
}

// scalar returns the text of a single value, reporting lists, mappings and
// empty values.
func (d *decoder) scalar(v *yaml.Node, key, want string) (string, bool) {
	v = deref(v)
	switch {
	case v.Kind != yaml.ScalarNode:
		d.fail(v.Line, "%s: want %s, not a %s", key, want, kindName(v))
		return "", false
	case isNull(v):
		d.fail(v.Line, "%s has no value; want %s", key, want)
		return "", false
	}
	return v.Value, true
}

func (d *decoder) str(v *yaml.Node, key string, dst *string, pos string) {
	if s, ok := d.scalar(v, key, "a string"); ok {
		*dst = s
		d.c.setLine(pos, deref(v).Line)
	}
}

func (d *decoder) boolean(v *yaml.Node, key string, set func(bool), pos string) {
	s, ok := d.scalar(v, key, "true or false")
	if !ok {
		return
	}
	switch strings.ToLower(s) {
	case "true", "yes", "on":
		set(true)
	case "false", "no", "off":
		set(false)
	default:
		d.fail(deref(v).Line, "%s %q: want true or false", key, s)
		return
	}
	d.c.setLine(pos, deref(v).Line)
}

func (d *decoder) integer(v *yaml.Node, key string, min, max int64, set func(int64), pos string) {
	s, ok := d.scalar(v, key, "a whole number")
	if !ok {
		return
	}
	line := deref(v).Line
	n, err := strconv.ParseInt(strings.ReplaceAll(s, "_", ""), 0, 64)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			d.fail(line, "%s %s: want %d to %d", key, s, min, max)
		} else {
			d.fail(line, "%s %q: want a whole number", key, s)
		}
		return
	}
	if n < min || n > max {
		d.fail(line, "%s %d: want %d to %d", key, n, min, max)
		return
	}
	set(n)
	d.c.setLine(pos, line)
}

func (d *decoder) duration(v *yaml.Node, key string, dst *time.Duration, pos string) {
	s, ok := d.scalar(v, key, "a duration like 30s or 5m")
	if !ok {
		return
	}
	line := deref(v).Line
	dur, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		if _, nerr := strconv.ParseFloat(s, 64); nerr == nil {
			d.fail(line, "%s %s: want a duration with a unit, like %ss or 5m", key, s, s)
		} else {
			d.fail(line, "%s %q: want a duration like 30s or 5m", key, s)
		}
		return
	}
	*dst = dur
	d.c.setLine(pos, line)
}

// list returns the items of a list; a single value counts as a one-item
// list and an empty value as an empty one.
func (d *decoder) list(v *yaml.Node, key, want string) ([]*yaml.Node, bool) {
	v = deref(v)
	switch {
	case isNull(v):
		return nil, true
	case v.Kind == yaml.ScalarNode:
		return []*yaml.Node{v}, true
	case v.Kind != yaml.SequenceNode:
		d.fail(v.Line, "%s: want a list of %s, not a %s", key, want, kindName(v))
		return nil, false
	}
	out := make([]*yaml.Node, len(v.Content))
	for i, it := range v.Content {
		out[i] = deref(it)
	}
	return out, true
}

// strs decodes a list of strings, calling set with each and its line.
func (d *decoder) strs(v *yaml.Node, key, want string, set func(i int, s string, line int)) {
	items, ok := d.list(v, key, want)
	if !ok {
		return
	}
	for i, it := range items {
		if s, ok := d.scalar(it, fmt.Sprintf("%s item %d", key, i+1), want); ok {
			set(i, s, it.Line)
		}
	}
}

func (d *decoder) top(n *yaml.Node) {
	c := d.c
	durs := func(key string, dst *time.Duration) func(k, v *yaml.Node) {
		return func(_, v *yaml.Node) { d.duration(v, key, dst, key) }
	}
	counts := func(key string, dst *int) func(k, v *yaml.Node) {
		return func(_, v *yaml.Node) {
			d.integer(v, key, 0, 1<<31-1, func(n int64) { *dst = int(n) }, key)
		}
	}
	fields := map[string]func(k, v *yaml.Node){
		"proxy":            func(_, v *yaml.Node) { d.str(v, "proxy", &c.Proxy, "proxy") },
		"tun":              func(_, v *yaml.Node) { d.tun(v) },
		"tcp-idle":         durs("tcp-idle", &c.TCPIdle),
		"udp-idle":         durs("udp-idle", &c.UDPIdle),
		"dns-idle":         durs("dns-idle", &c.DNSIdle),
		"dial-timeout":     durs("dial-timeout", &c.DialTimeout),
		"summary-interval": durs("summary-interval", &c.SummaryInterval),
		"fwmark": func(_, v *yaml.Node) {
			d.integer(v, "fwmark", 0, 1<<32-1, func(n int64) { c.Fwmark = uint32(n) }, "fwmark")
		},
		"out-interface": func(_, v *yaml.Node) { d.str(v, "out-interface", &c.OutInterface, "out-interface") },
		"tcp-sack": func(_, v *yaml.Node) {
			d.boolean(v, "tcp-sack", func(b bool) { c.TCP.SACK = &b }, "tcp-sack")
		},
		"tcp-moderate-rcvbuf": func(_, v *yaml.Node) {
			d.boolean(v, "tcp-moderate-rcvbuf", func(b bool) { c.TCP.ModerateRcvbuf = &b }, "tcp-moderate-rcvbuf")
		},
		"tcp-buf": func(_, v *yaml.Node) {
			d.integer(v, "tcp-buf", MinTCPBuf, MaxTCPBuf, func(n int64) { c.TCP.Buf = int(n) }, "tcp-buf")
		},
		"tcp-cc":        func(_, v *yaml.Node) { d.str(v, "tcp-cc", &c.TCP.CC, "tcp-cc") },
		"tcp-stack":     func(_, v *yaml.Node) { d.str(v, "tcp-stack", &c.TCP.Stack, "tcp-stack") },
		"tcp-ack-delay": durs("tcp-ack-delay", &c.TCP.AckDelay),
		"max-memory": func(_, v *yaml.Node) {
			s, ok := d.scalar(v, "max-memory", "a size like 512MiB or 1GiB, or 0 for none")
			if !ok {
				return
			}
			n, err := ParseSize(s)
			if err != nil {
				d.failErr(deref(v).Line, err, "max-memory %q: want a size like 512MiB or 1GiB, or 0 for none", s)
				return
			}
			c.Limits.MaxMemory = n
			d.c.setLine("max-memory", deref(v).Line)
		},
		"tcp-max-in-flight":            counts("tcp-max-in-flight", &c.Limits.TCPMaxInFlight),
		"tcp-max-in-flight-per-source": counts("tcp-max-in-flight-per-source", &c.Limits.TCPMaxInFlightPerSource),
		"tcp-handshake-timeout":        durs("tcp-handshake-timeout", &c.Limits.TCPHandshakeTimeout),
		"udp-max-flows":                counts("udp-max-flows", &c.Limits.UDPMaxFlows),
		"udp-max-flows-per-source":     counts("udp-max-flows-per-source", &c.Limits.UDPMaxFlowsPerSource),
		"udp-flow-rate":                counts("udp-flow-rate", &c.Limits.UDPFlowRate),
		"udp-flow-rate-per-source":     counts("udp-flow-rate-per-source", &c.Limits.UDPFlowRatePerSource),
		"proxies":                      func(_, v *yaml.Node) { d.proxies(v) },
		"rules":                        func(_, v *yaml.Node) { d.rules(v) },
		"dns":                          func(_, v *yaml.Node) { d.dns(v) },
		"api":                          func(_, v *yaml.Node) { d.api(v) },
		"wireguard":                    func(_, v *yaml.Node) { d.wireguard(v) },
		"route":                        func(_, v *yaml.Node) { d.route(v) },
	}
	for k, f := range d.sniffFields() {
		fields[k] = f
	}
	d.mapping(n, "", fields, topHints())
}

func (d *decoder) api(n *yaml.Node) {
	s := &d.c.API
	fields := map[string]func(k, v *yaml.Node){
		"listen":  func(_, v *yaml.Node) { d.str(v, "api.listen", &s.Listen, "api.listen") },
		"secret":  func(_, v *yaml.Node) { d.str(v, "api.secret", &s.Secret, "api.secret") },
		"metrics": func(_, v *yaml.Node) { d.str(v, "api.metrics", &s.Metrics, "api.metrics") },
		"allow-origins": func(_, v *yaml.Node) {
			s.AllowOrigins = nil
			d.strs(v, "api.allow-origins", "origins like https://metacubex.github.io", func(_ int, str string, line int) {
				s.AllowOrigins = append(s.AllowOrigins, str)
				d.c.setLine("api.allow-origins."+strconv.Itoa(len(s.AllowOrigins)-1), line)
			})
		},
	}
	hints := map[string]string{
		"external-controller": `write the address as "listen"`,
		"addr":                `write the address as "listen"`,
		"token":               `write it as "secret"`,
		"external-ui":         "the page is built in, at /ui/ on the API's address",
	}
	d.mapping(n, "api", fields, hints)
}

func (d *decoder) route(n *yaml.Node) {
	r := &d.c.Route
	flag := func(key string, dst *bool) func(k, v *yaml.Node) {
		return func(_, v *yaml.Node) { d.boolean(v, "route."+key, func(b bool) { *dst = b }, "route."+key) }
	}
	uids := func(key string, dst *[]hostnet.UIDRange) func(k, v *yaml.Node) {
		return func(_, v *yaml.Node) {
			*dst = nil
			d.strs(v, "route."+key, "user ids or ranges like 1000 or 1000-1999", func(_ int, str string, line int) {
				u, err := hostnet.ParseUIDRange(str)
				if err != nil {
					d.fail(line, "route.%s: %v", key, err)
					return
				}
				*dst = append(*dst, u)
				d.c.setLine("route."+key+"."+strconv.Itoa(len(*dst)-1), line)
			})
		}
	}
	fields := map[string]func(k, v *yaml.Node){
		"auto-route":  flag("auto-route", &r.AutoRoute),
		"kill-switch": flag("kill-switch", &r.KillSwitch),
		"lan-access":  flag("lan-access", &r.LANAccess),
		"exclude": func(_, v *yaml.Node) {
			r.Exclude = nil
			d.strs(v, "route.exclude", "CIDRs like 10.0.0.0/8", func(_ int, str string, line int) {
				p, err := netip.ParsePrefix(strings.TrimSpace(str))
				if err != nil {
					d.fail(line, "route.exclude %q: want a CIDR like 10.0.0.0/8 or 2001:db8::/32", str)
					return
				}
				r.Exclude = append(r.Exclude, p.Masked())
			})
		},
		"exclude-uid": uids("exclude-uid", &r.ExcludeUID),
		"include-uid": uids("include-uid", &r.IncludeUID),
		"include-cgroup": func(_, v *yaml.Node) {
			r.IncludeCgroup = nil
			d.strs(v, "route.include-cgroup", "cgroup paths like /user.slice/user-1000.slice/app.scope", func(_ int, str string, line int) {
				r.IncludeCgroup = append(r.IncludeCgroup, str)
				d.c.setLine("route.include-cgroup."+strconv.Itoa(len(r.IncludeCgroup)-1), line)
			})
		},
		"dns-config": func(_, v *yaml.Node) { d.str(v, "route.dns-config", &r.DNSConfig, "route.dns-config") },
		"rule-priority": func(_, v *yaml.Node) {
			d.integer(v, "route.rule-priority", 1, 32756, func(n int64) { r.RulePriority = int(n) }, "route.rule-priority")
		},
		"route-table": func(_, v *yaml.Node) {
			d.integer(v, "route.route-table", 1, 0xfffffff0, func(n int64) { r.RouteTable = int(n) }, "route.route-table")
		},
		"gateway": func(_, v *yaml.Node) { d.str(v, "route.gateway", &r.Gateway, "route.gateway") },
	}
	hints := map[string]string{
		"strict-route":  `tunsocks' strict route is "kill-switch: true"`,
		"auto-redirect": "tunsocks routes with policy rules only; drop it",
		"table":         `did you mean "route-table"?`,
	}
	d.mapping(n, "route", fields, hints)
}

func (d *decoder) tun(n *yaml.Node) {
	t := &d.c.Tun
	fields := map[string]func(k, v *yaml.Node){
		"name": func(_, v *yaml.Node) { d.str(v, "tun.name", &t.Name, "tun.name") },
		"fd": func(_, v *yaml.Node) {
			d.integer(v, "tun.fd", -1, 1<<31-1, func(n int64) { t.FD = int(n) }, "tun.fd")
		},
		"addrs": func(_, v *yaml.Node) {
			var addrs []netip.Prefix
			bad := false
			d.strs(v, "tun.addrs", "addresses with prefix length like 198.18.0.1/15", func(i int, s string, line int) {
				p, err := netip.ParsePrefix(strings.TrimSpace(s))
				if err != nil {
					bad = true
					if a, aerr := netip.ParseAddr(strings.TrimSpace(s)); aerr == nil {
						d.failErr(line, err, "tun.addrs %q: want the address with its prefix length, like %s/%d", s, a, a.BitLen())
					} else {
						d.failErr(line, err, "tun.addrs %q: want an address with prefix length, like 198.18.0.1/15 or fc00::1/18", s)
					}
					return
				}
				addrs = append(addrs, p)
				d.c.setLine("tun.addrs."+strconv.Itoa(len(addrs)-1), line)
			})
			if !bad {
				t.Addrs = addrs
				d.c.setLine("tun.addrs", deref(v).Line)
			}
		},
		"mtu": func(_, v *yaml.Node) {
			d.integer(v, "tun.mtu", MinMTU, MaxMTU, func(n int64) { t.MTU = int(n) }, "tun.mtu")
		},
		"offload": func(_, v *yaml.Node) { d.boolean(v, "tun.offload", func(b bool) { t.Offload = b }, "tun.offload") },
		"pcap":    func(_, v *yaml.Node) { d.str(v, "tun.pcap", &t.Pcap, "tun.pcap") },
	}
	hints := map[string]string{
		"addr":    `did you mean "addrs"? it is a list`,
		"address": `did you mean "addrs"? it is a list`,
		"tun-fd":  `did you mean "fd"?`,
		"device":  `did you mean "name"?`,
	}
	d.mapping(n, "tun", fields, hints)
}

func (d *decoder) proxies(n *yaml.Node) {
	items, ok := d.list(n, "proxies", "entries like {name: corp, url: socks5://10.0.0.1:1080}")
	if !ok {
		return
	}
	for i, it := range items {
		if it.Kind != yaml.MappingNode {
			d.fail(it.Line, "proxies item %d: want an entry like {name: corp, url: socks5://10.0.0.1:1080}, not a %s", i+1, kindName(it))
			continue
		}
		p := Proxy{Line: it.Line}
		label := fmt.Sprintf("proxies item %d", i+1)
		// Read the name first so every other message can say whose it is.
		for j := 0; j+1 < len(it.Content); j += 2 {
			if k := deref(it.Content[j]); k.Kind == yaml.ScalarNode && k.Value == "name" {
				if s, ok := d.scalar(it.Content[j+1], label+" name", "a name like corp"); ok {
					p.Name = s
					label = fmt.Sprintf("proxy %q", s)
				}
			}
		}
		fields := map[string]func(k, v *yaml.Node){
			"name": func(_, _ *yaml.Node) {},
			"url": func(_, v *yaml.Node) {
				s, ok := d.scalar(v, label+" url", "a URL like socks5://host:1080")
				if !ok {
					p.decodeErr = true
					return
				}
				u, msg := parseProxyURL(s)
				if msg != "" {
					p.decodeErr = true
					d.fail(deref(v).Line, "%s: %s", label, msg)
					return
				}
				p.URL = u
				p.urlLine = deref(v).Line
			},
			"chain": func(_, v *yaml.Node) {
				p.Chain = []string{} // present, even if empty: Validate reports it
				nerr := len(d.errs)
				d.strs(v, label+" chain", "proxy names", func(_ int, s string, line int) {
					p.Chain = append(p.Chain, s)
					p.chainLines = append(p.chainLines, line)
				})
				if len(d.errs) > nerr {
					p.decodeErr = true
				}
			},
		}
		hints := map[string]string{}
		for _, k := range []string{"type", "server", "port", "username", "password", "udp"} {
			hints[k] = "write the upstream as one url, e.g. url: socks5://user:pass@server:1080"
		}
		d.mapping(it, label, fields, hints)
		d.c.Proxies = append(d.c.Proxies, p)
	}
}

// parseProxyURL parses a proxy URL, returning a message for the user when
// it does not parse. The message never repeats the text (it may hold a
// password).
func parseProxyURL(s string) (*url.URL, string) {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "://") {
		return nil, "url has no scheme; want socks5://host:port, socks4://host:port, socks4a://host:port or http://host:port"
	}
	u, err := url.Parse(s)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Sprintf("url does not parse (%v); want scheme://[user:pass@]host:port", err)
	}
	return u, ""
}

func (d *decoder) rules(n *yaml.Node) {
	v := deref(n)
	flow := v.Kind == yaml.SequenceNode && v.Style&yaml.FlowStyle != 0
	items, ok := d.list(n, "rules", "rules like DOMAIN-SUFFIX,example.com,corp")
	if !ok {
		return
	}
	if v.Kind == yaml.ScalarNode && !isNull(v) {
		d.fail(v.Line, "rules: want a list, one rule per line as '- DOMAIN-SUFFIX,example.com,corp'")
		return
	}
	for _, it := range items {
		switch {
		case it.Kind != yaml.ScalarNode:
			d.fail(it.Line, "rules: want a rule written as text like DOMAIN-SUFFIX,example.com,corp, not a %s", kindName(it))
			continue
		case isNull(it):
			d.fail(it.Line, "rules: empty rule; want a rule like DOMAIN-SUFFIX,example.com,corp")
			continue
		case flow && it.Style&(yaml.SingleQuotedStyle|yaml.DoubleQuotedStyle) == 0:
			d.fail(it.Line, "rules: in [ ... ] commas separate list items, which splits a rule; write one rule per line as '- TYPE,payload,TARGET'")
			return
		case strings.ContainsAny(it.Value, "\r\n"):
			d.fail(it.Line, "rules: a rule is one line; write one rule per '- ' item")
			continue
		}
		d.c.Rules = append(d.c.Rules, rules.Line{Text: it.Value, File: d.file, Line: it.Line})
	}
}

func (d *decoder) dns(n *yaml.Node) {
	s := &d.c.DNS
	prefix := func(key string, dst *netip.Prefix, allowEmpty bool) func(k, v *yaml.Node) {
		example := DefaultFakeIPRange
		if allowEmpty {
			example = DefaultFakeIPRange6 + ` (or "" to disable)`
		}
		return func(_, v *yaml.Node) {
			v = deref(v)
			if allowEmpty && (isNull(v) || (v.Kind == yaml.ScalarNode && strings.TrimSpace(v.Value) == "")) {
				*dst = netip.Prefix{}
				d.c.setLine("dns."+key, v.Line)
				return
			}
			str, ok := d.scalar(v, "dns."+key, "a prefix like "+example)
			if !ok {
				return
			}
			p, err := netip.ParsePrefix(strings.TrimSpace(str))
			if err != nil {
				d.failErr(v.Line, err, "dns.%s %q: want a prefix like %s", key, str, example)
				return
			}
			*dst = p
			d.c.setLine("dns."+key, v.Line)
		}
	}
	fields := map[string]func(k, v *yaml.Node){
		"enable":         func(_, v *yaml.Node) { d.boolean(v, "dns.enable", func(b bool) { s.Enable = &b }, "dns.enable") },
		"listen":         func(_, v *yaml.Node) { d.str(v, "dns.listen", &s.Listen, "dns.listen") },
		"fake-ip-range":  prefix("fake-ip-range", &s.FakeIPRange, false),
		"fake-ip-range6": prefix("fake-ip-range6", &s.FakeIPRange6, true),
		"fake-ip-filter": func(_, v *yaml.Node) {
			s.FakeIPFilter = nil
			d.strs(v, "dns.fake-ip-filter", "domain patterns like +.example.com", func(_ int, str string, line int) {
				s.FakeIPFilter = append(s.FakeIPFilter, str)
				d.c.setLine("dns.fake-ip-filter."+strconv.Itoa(len(s.FakeIPFilter)-1), line)
			})
		},
		"nameserver": func(_, v *yaml.Node) {
			s.Nameservers = nil
			d.strs(v, "dns.nameserver", "resolvers like 1.1.1.1 or tcp://1.1.1.1:53", func(_ int, str string, line int) {
				s.Nameservers = append(s.Nameservers, str)
				d.c.setLine("dns.nameserver."+strconv.Itoa(len(s.Nameservers)-1), line)
			})
		},
		"dns-hijack":  func(_, v *yaml.Node) { d.boolean(v, "dns.dns-hijack", func(b bool) { s.Hijack = b }, "dns.dns-hijack") },
		"cache-file":  func(_, v *yaml.Node) { d.str(v, "dns.cache-file", &s.CacheFile, "dns.cache-file") },
		"fake-ip-ttl": func(_, v *yaml.Node) { d.duration(v, "dns.fake-ip-ttl", &s.FakeIPTTL, "dns.fake-ip-ttl") },
	}
	hints := map[string]string{
		"enhanced-mode":      "tunsocks always answers with fake IPs (fake-ip mode); drop it",
		"default-nameserver": `a Clash setting tunsocks does not use; nameservers are IP addresses, list them under "nameserver"`,
		"fallback":           "a Clash setting tunsocks does not use",
		"ipv6":               `tunsocks answers AAAA from fake-ip-range6; set it to "" to disable IPv6 fake addresses`,
		"nameservers":        `did you mean "nameserver"?`,
	}
	d.mapping(n, "dns", fields, hints)
}

// closest returns the candidate nearest to s by edit distance, if near.
func closest(s string, cands []string) string {
	best, bestD := suggest.Closest(s, cands, strings.ToLower)
	if bestD > 3 || bestD > len(s)/2 {
		return ""
	}
	return best
}
