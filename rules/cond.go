package rules

import (
	"net/netip"
	"regexp"
	"strings"

	"github.com/tunsocks/tunsocks/internal/idn"
)

// kind is a condition's rule type.
type kind uint8

const (
	kDomain kind = iota
	kSuffix
	kWildcard // "*.example.com" in a RULE-SET file: exactly one more label
	kKeyword
	kRegex
	kIPCIDR
	kSrcIPCIDR
	kDstPort
	kSrcPort
	kNetwork
	kProcName
	kProcPath
	kUID
	kInType
	kInName
	kInUser
	kAnd
	kOr
	kNot
	kMatch
	kRuleSet
)

// ruleTypes is the one table of rule types: each as written (upper case)
// with its kind, in the order errors list them. Hidden names are accepted
// but not offered in errors (FINAL is mihomo's old name for MATCH).
var ruleTypes = []struct {
	name   string
	kind   kind
	hidden bool
}{
	{"DOMAIN", kDomain, false},
	{"DOMAIN-SUFFIX", kSuffix, false},
	{"DOMAIN-KEYWORD", kKeyword, false},
	{"DOMAIN-REGEX", kRegex, false},
	{"IP-CIDR", kIPCIDR, false},
	{"IP-CIDR6", kIPCIDR, false},
	{"SRC-IP-CIDR", kSrcIPCIDR, false},
	{"DST-PORT", kDstPort, false},
	{"SRC-PORT", kSrcPort, false},
	{"NETWORK", kNetwork, false},
	{"PROCESS-NAME", kProcName, false},
	{"PROCESS-PATH", kProcPath, false},
	{"UID", kUID, false},
	{"IN-TYPE", kInType, false},
	{"IN-NAME", kInName, false},
	{"IN-USER", kInUser, false},
	{"AND", kAnd, false},
	{"OR", kOr, false},
	{"NOT", kNot, false},
	{"RULE-SET", kRuleSet, false},
	{"MATCH", kMatch, false},
	{"FINAL", kMatch, true},
}

// ruleKind returns the kind of the rule type name (upper case).
func ruleKind(name string) (kind, bool) {
	for _, t := range ruleTypes {
		if t.name == name {
			return t.kind, true
		}
	}
	return 0, false
}

// ruleTypeNames lists the rule types errors offer, in table order.
func ruleTypeNames() []string {
	var names []string
	for _, t := range ruleTypes {
		if !t.hidden {
			names = append(names, t.name)
		}
	}
	return names
}

// numRange is an inclusive range of ports or uids.
type numRange struct{ lo, hi uint32 }

// cond is one parsed condition: a rule without its target.
type cond struct {
	kind   kind
	str    string // domain (normalised), keyword, process name or path, network
	re     *regexp.Regexp
	pfx    netip.Prefix
	ranges []numRange
	subs   []*cond
}

// walk calls f for c and every nested condition.
func (c *cond) walk(f func(*cond)) {
	f(c)
	for _, s := range c.subs {
		s.walk(f)
	}
}

// mctx is the state of one Match call.
type mctx struct {
	m      *Metadata
	host   string // normalised m.Host
	lookup ProcessLookup
	looked bool
}

// resolveProcess fills m.Process and m.UID from the lookup, at most once.
func (x *mctx) resolveProcess() {
	if x.looked || x.lookup == nil {
		return
	}
	x.looked = true
	path, uid, ok := x.lookup(x.m)
	if !ok {
		return
	}
	if x.m.Process == "" {
		x.m.Process = path
	}
	if x.m.UID < 0 {
		x.m.UID = uid
	}
}

func (x *mctx) process() string {
	if x.m.Process == "" {
		x.resolveProcess()
	}
	return x.m.Process
}

func (x *mctx) uid() int {
	if x.m.UID < 0 {
		x.resolveProcess()
	}
	return x.m.UID
}

func (c *cond) match(x *mctx) bool {
	switch c.kind {
	case kDomain:
		return x.host != "" && x.host == c.str
	case kSuffix:
		return hasDomainSuffix(x.host, c.str)
	case kWildcard:
		i := strings.IndexByte(x.host, '.')
		return i > 0 && x.host[i+1:] == c.str
	case kKeyword:
		return x.host != "" && strings.Contains(x.host, c.str)
	case kRegex:
		return x.host != "" && c.re.MatchString(x.host)
	case kIPCIDR:
		a := x.m.Dst.Addr()
		return (x.m.Host == "" || x.m.RealDst) && a.IsValid() && c.pfx.Contains(a.Unmap())
	case kSrcIPCIDR:
		a := x.m.Src.Addr()
		return a.IsValid() && c.pfx.Contains(a.Unmap())
	case kDstPort:
		// The port is known even for a domain request, whose address is unset.
		return inRanges(c.ranges, uint32(x.m.Dst.Port()))
	case kSrcPort:
		return inRanges(c.ranges, uint32(x.m.Src.Port()))
	case kNetwork:
		return strings.EqualFold(x.m.Network, c.str)
	case kProcName:
		p := x.process()
		return p != "" && baseName(p) == c.str
	case kProcPath:
		p := x.process()
		return p != "" && p == c.str
	case kUID:
		u := x.uid()
		return u >= 0 && inRanges(c.ranges, uint32(u))
	case kInType:
		return x.m.InType == c.str
	case kInName:
		return x.m.InName != "" && x.m.InName == c.str
	case kInUser:
		return x.m.InUser != "" && x.m.InUser == c.str
	case kAnd:
		for _, s := range c.subs {
			if !s.match(x) {
				return false
			}
		}
		return true
	case kOr:
		for _, s := range c.subs {
			if s.match(x) {
				return true
			}
		}
		return false
	case kNot:
		return !c.subs[0].match(x)
	case kMatch:
		return true
	}
	return false
}

func inRanges(rs []numRange, v uint32) bool {
	for _, r := range rs {
		if v >= r.lo && v <= r.hi {
			return true
		}
	}
	return false
}

// hasDomainSuffix reports whether host is suffix or a subdomain of it.
func hasDomainSuffix(host, suffix string) bool {
	if !strings.HasSuffix(host, suffix) {
		return false
	}
	n := len(host) - len(suffix)
	return n == 0 || host[n-1] == '.'
}

// baseName is the last element of an executable path, for either slash.
func baseName(p string) string {
	if i := strings.LastIndexAny(p, `/\`); i >= 0 {
		return p[i+1:]
	}
	return p
}

// normHost lower-cases a domain, drops one trailing dot and converts
// internationalised labels to their ASCII (xn--) form, the form rules are
// compiled in. It does not allocate when the host is already lower-case
// ASCII, as names from DNS are. A non-ASCII host that is not a valid
// internationalised name is only lower-cased (it matches no domain rule
// but may match a keyword or regular expression).
func normHost(h string) string {
	h = strings.TrimSuffix(h, ".")
	for i := 0; i < len(h); i++ {
		if c := h[i]; c >= 'A' && c <= 'Z' || c >= 0x80 {
			h = strings.ToLower(h)
			if a, err := idn.ASCII(h); err == nil {
				return a
			}
			return h
		}
	}
	return h
}
