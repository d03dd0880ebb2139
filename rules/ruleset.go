package rules

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/gaissmai/bart"
)

// noID is larger than every entry id.
const noID = math.MaxInt32

// Ruleset is a compiled rule list. It is immutable and safe for concurrent
// use.
//
// Every rule and every line of a RULE-SET file is an entry, numbered in file
// order, so the first matching rule is the matching entry with the smallest
// id. Domain, IP-CIDR and SRC-IP-CIDR entries live in indexes (a hash map
// walked label by label, and bart prefix tables) that each return the
// smallest matching id in one lookup; the other entries are tried in order,
// but only those with an id below the best indexed hit. A match therefore
// costs a few map probes and two prefix lookups plus the non-indexed rules
// that come before the answer, however many domains and CIDRs there are.
type Ruleset struct {
	rules   []ruleInfo
	entries []entryInfo
	domains map[string]domainIDs
	dst     *bart.Table[int32]
	src     *bart.Table[int32]
	linear  []linearEntry

	needsDomain  bool
	needsProcess bool
	firstDomain  int32 // the smallest id of an entry that looks at the domain; noID for none
}

type ruleInfo struct {
	text    string
	source  string
	action  Action
	typ     string // the keyword as written, upper case
	payload string
	size    int // a RULE-SET's entries; -1 otherwise
}

type entryInfo struct {
	rule int32  // index into rules
	line int32  // line in file, for RULE-SET lines
	text string // the RULE-SET line; "" for a top-level rule
	file string // the RULE-SET file
	c    *cond  // the condition, for the reference matcher in tests
}

// domainIDs are the smallest entry ids of the domain rules naming one domain.
type domainIDs struct {
	exact  int32 // DOMAIN
	suffix int32 // DOMAIN-SUFFIX: the domain and its subdomains
	wild   int32 // *.domain: exactly one label more
}

type linearEntry struct {
	id int32
	c  *cond
}

type builder struct {
	rs       *Ruleset
	dst, src map[netip.Prefix]int32
}

func newBuilder() *builder {
	return &builder{
		rs:  &Ruleset{domains: map[string]domainIDs{}, firstDomain: noID},
		dst: map[netip.Prefix]int32{},
		src: map[netip.Prefix]int32{},
	}
}

func (b *builder) addRule(r ruleInfo) int32 {
	b.rs.rules = append(b.rs.rules, r)
	return int32(len(b.rs.rules) - 1)
}

func (b *builder) addEntry(rule int32, c *cond, text, file string, line int) *problem {
	rs := b.rs
	if len(rs.entries) >= maxEntries {
		return newProblem("split the rules", nil, "more than %d rules and RULE-SET lines", maxEntries)
	}
	id := int32(len(rs.entries))
	rs.entries = append(rs.entries, entryInfo{rule: rule, text: text, file: file, line: int32(min(line, math.MaxInt32)), c: c})
	c.walk(func(c *cond) {
		switch c.kind {
		case kDomain, kSuffix, kWildcard, kKeyword, kRegex:
			rs.needsDomain = true
			rs.firstDomain = min(rs.firstDomain, id)
		case kProcName, kProcPath, kUID:
			rs.needsProcess = true
		}
	})
	switch c.kind {
	case kDomain, kSuffix, kWildcard:
		v, ok := rs.domains[c.str]
		if !ok {
			v = domainIDs{exact: noID, suffix: noID, wild: noID}
		}
		switch c.kind {
		case kDomain:
			v.exact = min(v.exact, id)
		case kSuffix:
			v.suffix = min(v.suffix, id)
		case kWildcard:
			v.wild = min(v.wild, id)
		}
		rs.domains[c.str] = v
	case kIPCIDR:
		if _, ok := b.dst[c.pfx]; !ok {
			b.dst[c.pfx] = id
		}
	case kSrcIPCIDR:
		if _, ok := b.src[c.pfx]; !ok {
			b.src[c.pfx] = id
		}
	default:
		rs.linear = append(rs.linear, linearEntry{id: id, c: c})
	}
	return nil
}

func (b *builder) build() *Ruleset {
	b.rs.dst = prefixTable(b.dst)
	b.rs.src = prefixTable(b.src)
	return b.rs
}

// prefixTable builds a bart table whose longest-prefix match for an address
// yields the smallest id among all prefixes containing it: prefixes are
// inserted shortest first, each taking the minimum of its own id and that
// of its longest already-inserted supernet (which already carries the
// minimum of its own supernets).
func prefixTable(m map[netip.Prefix]int32) *bart.Table[int32] {
	if len(m) == 0 {
		return nil
	}
	pfxs := make([]netip.Prefix, 0, len(m))
	for p := range m {
		pfxs = append(pfxs, p)
	}
	slices.SortFunc(pfxs, func(a, b netip.Prefix) int {
		if c := a.Bits() - b.Bits(); c != 0 {
			return c
		}
		return a.Addr().Compare(b.Addr())
	})
	t := new(bart.Table[int32])
	for _, p := range pfxs {
		id := m[p]
		if up, ok := t.LookupPrefix(p); ok && up < id {
			id = up
		}
		t.Insert(p, id)
	}
	return t
}

// Len returns the number of rules (a RULE-SET rule counts once).
func (rs *Ruleset) Len() int { return len(rs.rules) }

// Rule is one rule of a Ruleset as written, for listings.
type Rule struct {
	Index   int    // position in the rule list (0-based), as Match.Index
	Type    string // the keyword, upper case: DOMAIN-SUFFIX, RULE-SET, MATCH...
	Payload string // what the rule matches, as written; a RULE-SET's path; "" for MATCH
	Action  Action
	Text    string // the whole line as written
	Source  string // file:line
	Size    int    // a RULE-SET's entries; -1 for other rules
}

// Rules lists the rules in order.
func (rs *Ruleset) Rules() []Rule {
	if rs == nil {
		return nil
	}
	out := make([]Rule, len(rs.rules))
	for i, r := range rs.rules {
		out[i] = Rule{Index: i, Type: r.typ, Payload: r.payload, Action: r.action, Text: r.text, Source: r.source, Size: r.size}
	}
	return out
}

// NeedsDomain reports whether any rule matches on the domain, so fake-IP
// DNS should be on for the rules to see names.
func (rs *Ruleset) NeedsDomain() bool { return rs.needsDomain }

// NeedsProcess reports whether any rule matches on the owning process or
// user, so a process lookup should be wired.
func (rs *Ruleset) NeedsProcess() bool { return rs.needsProcess }

// NameCouldMatter reports whether knowing the name of the flow m, which has
// none (m.Host is empty), could change its rule: a rule that looks at the
// domain comes before the first rule m matches by its addresses, ports,
// process and so on. A flow for which it is false gains nothing from having
// its name sniffed. Like Match, it may look up the process and store the
// answer in m.
func (rs *Ruleset) NameCouldMatter(m *Metadata, lookup ProcessLookup) bool {
	if rs == nil || m == nil || !rs.needsDomain {
		return false
	}
	limit := rs.firstDomain
	if a := m.Dst.Addr(); rs.dst != nil && a.IsValid() {
		if id, ok := rs.dst.Lookup(a.Unmap()); ok && id < limit {
			return false
		}
	}
	if a := m.Src.Addr(); rs.src != nil && a.IsValid() {
		if id, ok := rs.src.Lookup(a.Unmap()); ok && id < limit {
			return false
		}
	}
	x := mctx{m: m, lookup: lookup}
	for i := range rs.linear {
		l := &rs.linear[i]
		if l.id >= limit {
			break
		}
		if l.c.match(&x) {
			return false
		}
	}
	return true
}

// Match returns the first rule that matches m, or, when none does, DIRECT
// with Index -1. It never resolves names: IP-CIDR rules look at m.Dst only
// when m.Host is empty (a flow known by name has no real destination
// address; a fake IP is not one) or m.RealDst says the address is real. lookup may be nil; it is called only when
// a PROCESS-NAME, PROCESS-PATH or UID rule is reached and m lacks the
// answer, and what it finds is stored in m.Process and m.UID.
func (rs *Ruleset) Match(m *Metadata, lookup ProcessLookup) Match {
	if rs == nil || m == nil {
		return Match{Action: Action{Kind: Direct}, Index: -1}
	}
	x := mctx{m: m, host: normHost(m.Host), lookup: lookup}
	best := int32(noID)
	if x.host != "" && len(rs.domains) > 0 {
		best = rs.lookupDomain(x.host)
	}
	if rs.dst != nil && (m.Host == "" || m.RealDst) {
		if a := m.Dst.Addr(); a.IsValid() {
			if id, ok := rs.dst.Lookup(a.Unmap()); ok && id < best {
				best = id
			}
		}
	}
	if rs.src != nil {
		if a := m.Src.Addr(); a.IsValid() {
			if id, ok := rs.src.Lookup(a.Unmap()); ok && id < best {
				best = id
			}
		}
	}
	for i := range rs.linear {
		l := &rs.linear[i]
		if l.id >= best {
			break
		}
		if l.c.match(&x) {
			best = l.id
			break
		}
	}
	if best == noID {
		return Match{Action: Action{Kind: Direct}, Index: -1}
	}
	e := &rs.entries[best]
	r := &rs.rules[e.rule]
	res := Match{Action: r.action, Rule: r.text, Source: r.source, Type: r.typ, Payload: r.payload, Index: int(e.rule)}
	if e.file != "" {
		res.Entry = e.text
		res.EntrySource = e.file + ":" + strconv.Itoa(int(e.line))
	}
	return res
}

// lookupDomain returns the smallest id of the domain rules matching host:
// the exact name, then each parent domain for suffix rules, and the
// immediate parent for one-label wildcards.
func (rs *Ruleset) lookupDomain(host string) int32 {
	best := int32(noID)
	if v, ok := rs.domains[host]; ok {
		best = min(v.exact, v.suffix)
	}
	first := true
	for s := host; ; first = false {
		i := strings.IndexByte(s, '.')
		if i < 0 {
			break
		}
		if i == 0 && first {
			break // an empty first label is no subdomain
		}
		s = s[i+1:]
		if v, ok := rs.domains[s]; ok {
			best = min(best, v.suffix)
			if first {
				best = min(best, v.wild)
			}
		}
	}
	return best
}

// String summarises the rule set.
func (rs *Ruleset) String() string {
	n := 0
	for _, t := range []*bart.Table[int32]{rs.dst, rs.src} {
		if t != nil {
			n += t.Size()
		}
	}
	return fmt.Sprintf("%d rules (%d entries: %d domains, %d prefixes, %d other)",
		len(rs.rules), len(rs.entries), len(rs.domains), n, len(rs.linear))
}
