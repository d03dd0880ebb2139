package rules

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/tunsocks/tunsocks/internal/idn"
	"github.com/tunsocks/tunsocks/internal/suggest"
)

// ParseOptions tells the parser which targets exist and where RULE-SET
// files come from.
type ParseOptions struct {
	// Targets reports whether a proxy or chain name is known. DIRECT,
	// REJECT and REJECT-DROP are always known. When Targets is nil, the
	// names in TargetNames are the known ones; when both are nil, any name
	// is accepted (and checked later by whoever wires outbounds).
	Targets func(name string) bool
	// TargetNames are listed in "unknown target" errors so the user sees
	// what would be right.
	TargetNames []string
	// RuleSetLoader opens the file named in a RULE-SET rule. When nil, the
	// path is opened with os.Open, relative to BaseDir.
	RuleSetLoader func(path string) (io.ReadCloser, error)
	// BaseDir is the directory relative RULE-SET paths are resolved in.
	// When empty, it is the directory of the file holding the RULE-SET line.
	BaseDir string
}

// ParseError is one bad line. Its text is "file:line: what is wrong; what
// would be right".
type ParseError struct {
	File string
	Line int
	Msg  string // what is wrong
	Hint string // what would be right; may be empty
	Err  error  // the cause, if any
}

func (e *ParseError) Error() string {
	s := e.File + ":" + strconv.Itoa(e.Line) + ": " + e.Msg
	if e.Hint != "" {
		s += "; " + e.Hint
	}
	return s
}

func (e *ParseError) Unwrap() error { return e.Err }

// problem is a ParseError before its position is known.
type problem struct {
	msg, hint string
	err       error
}

func newProblem(hint string, err error, format string, args ...any) *problem {
	return &problem{msg: fmt.Sprintf(format, args...), hint: hint, err: err}
}

const (
	maxErrors  = 10      // errors collected before giving up
	maxDepth   = 16      // nesting of AND/OR/NOT
	maxLineLen = 1 << 20 // longest line read from a file
	maxEntries = 1 << 26 // rules plus RULE-SET lines in one Ruleset
	maxDomain  = 253
)

// Parse reads rules, one per line, from r. name is the file name used in
// errors and, when opts.BaseDir is empty, the base for relative RULE-SET
// paths. On bad input it returns up to 10 *ParseError joined with
// errors.Join, each naming file and line.
func Parse(r io.Reader, name string, opts ParseOptions) (*Ruleset, error) {
	var lines []Line
	err := scanLines(r, func(n int, text string) bool {
		lines = append(lines, Line{Text: text, File: name, Line: n})
		return true
	})
	if err != nil {
		return nil, annotateScanErr(err, name, len(lines)+1)
	}
	return ParseLines(lines, opts)
}

// ParseLines parses rules that each carry their own origin (for example
// the rules list of a YAML config).
func ParseLines(lines []Line, opts ParseOptions) (*Ruleset, error) {
	p := &parser{opts: opts, sets: map[string]*setFile{}, b: newBuilder()}
	for _, l := range lines {
		if len(p.errs) >= maxErrors {
			break
		}
		p.parseRule(l)
	}
	if len(p.errs) > 0 {
		if len(p.errs) >= maxErrors {
			p.errs = append(p.errs, fmt.Errorf("too many errors (%d); stopped", len(p.errs)))
		}
		return nil, errors.Join(p.errs...)
	}
	return p.b.build(), nil
}

// scanLines calls f for every line of r with its 1-based number, stripping a
// byte order mark and carriage returns.
func scanLines(r io.Reader, f func(n int, text string) bool) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), maxLineLen)
	n := 0
	for sc.Scan() {
		n++
		text := sc.Text()
		if n == 1 {
			text = strings.TrimPrefix(text, "\ufeff")
		}
		if !f(n, strings.TrimSuffix(text, "\r")) {
			return nil
		}
	}
	return sc.Err()
}

func annotateScanErr(err error, file string, line int) error {
	if errors.Is(err, bufio.ErrTooLong) {
		return &ParseError{File: file, Line: line, Msg: "line too long", Hint: fmt.Sprintf("lines are limited to %d bytes", maxLineLen), Err: err}
	}
	return &ParseError{File: file, Line: line, Msg: "read failed: " + err.Error(), Err: err}
}

type parser struct {
	opts ParseOptions
	errs []error
	sets map[string]*setFile
	b    *builder
}

func (p *parser) fail(file string, line int, pr *problem) {
	if len(p.errs) >= maxErrors {
		return
	}
	p.errs = append(p.errs, &ParseError{File: file, Line: line, Msg: pr.msg, Hint: pr.hint, Err: pr.err})
}

// parseRule parses one top-level line: TYPE,PAYLOAD,TARGET[,no-resolve].
func (p *parser) parseRule(l Line) {
	text := strings.TrimSpace(l.Text)
	if text == "" || text[0] == '#' {
		return
	}
	typ, rest, _ := strings.Cut(text, ",")
	typName := strings.ToUpper(strings.TrimSpace(typ))
	k, ok := ruleKind(typName)
	if !ok {
		p.fail(l.File, l.Line, unknownType(typName, true))
		return
	}
	source := l.File + ":" + strconv.Itoa(l.Line)
	var (
		c       *cond
		target  string
		payload string // as written, for listings (the API's /rules)
		pr      *problem
	)
	switch k {
	case kMatch:
		target = strings.TrimSpace(rest)
		if target == "" || strings.Contains(target, ",") {
			p.fail(l.File, l.Line, newProblem("expected MATCH,TARGET", nil, "MATCH takes exactly one target"))
			return
		}
		c = &cond{kind: kMatch}
	case kAnd, kOr, kNot:
		var after string
		c, after, pr = parseLogic(k, typName, rest, 0)
		if pr != nil {
			p.fail(l.File, l.Line, pr)
			return
		}
		payload = strings.TrimSpace(rest[:len(rest)-len(after)])
		target, pr = targetAfter(typName, after)
		if pr != nil {
			p.fail(l.File, l.Line, pr)
			return
		}
	case kRuleSet:
		fields := splitFields(rest)
		if len(fields) < 2 || fields[0] == "" {
			p.fail(l.File, l.Line, newProblem("expected RULE-SET,path/to/file,TARGET", nil, "RULE-SET needs a path and a target"))
			return
		}
		if len(fields) > 2 {
			p.fail(l.File, l.Line, newProblem("expected RULE-SET,path/to/file,TARGET", nil, "unexpected extra field %q", fields[2]))
			return
		}
		act, pr := p.target(fields[1])
		if pr != nil {
			p.fail(l.File, l.Line, pr)
			return
		}
		set, pr := p.loadSet(fields[0], l.File)
		if pr != nil {
			p.fail(l.File, l.Line, pr)
			return
		}
		if set == nil { // errors inside the set were reported already
			return
		}
		ri := p.b.addRule(ruleInfo{text: text, source: source, action: act, typ: typName, payload: fields[0], size: len(set.entries)})
		for i := range set.entries {
			e := &set.entries[i]
			if pr := p.b.addEntry(ri, e.c, e.text, set.name, e.line); pr != nil {
				p.fail(l.File, l.Line, pr)
				return
			}
		}
		return
	default:
		fields := splitFields(rest)
		fields = stripParams(fields)
		if len(fields) < 2 {
			p.fail(l.File, l.Line, newProblem(fmt.Sprintf("expected %s,%s,TARGET", typName, example(k)), nil, "%s needs a payload and a target", typName))
			return
		}
		target = fields[len(fields)-1]
		pf := fields[:len(fields)-1]
		if len(pf) > 1 && k != kRegex {
			p.fail(l.File, l.Line, newProblem(fmt.Sprintf("expected %s,%s,TARGET", typName, example(k)), nil, "unexpected extra field %q", pf[1]))
			return
		}
		payload = strings.Join(pf, ",")
		c, pr = simpleCond(k, typName, payload)
		if pr != nil {
			p.fail(l.File, l.Line, pr)
			return
		}
	}
	act, pr := p.target(target)
	if pr != nil {
		p.fail(l.File, l.Line, pr)
		return
	}
	ri := p.b.addRule(ruleInfo{text: text, source: source, action: act, typ: typName, payload: payload, size: -1})
	if pr := p.b.addEntry(ri, c, "", "", 0); pr != nil {
		p.fail(l.File, l.Line, pr)
	}
}

// splitFields splits on commas and trims each field.
func splitFields(s string) []string {
	f := strings.Split(s, ",")
	for i := range f {
		f[i] = strings.TrimSpace(f[i])
	}
	return f
}

// stripParams drops trailing Clash parameters. Matching never resolves a
// name, so no-resolve is what every IP rule does anyway.
func stripParams(f []string) []string {
	for len(f) > 1 && strings.EqualFold(f[len(f)-1], "no-resolve") {
		f = f[:len(f)-1]
	}
	return f
}

func example(k kind) string {
	switch k {
	case kDomain, kSuffix:
		return "example.com"
	case kKeyword:
		return "example"
	case kRegex:
		return `^(.+\.)?example\.com$`
	case kIPCIDR:
		return "10.0.0.0/8"
	case kSrcIPCIDR:
		return "192.168.1.0/24"
	case kDstPort, kSrcPort:
		return "443"
	case kNetwork:
		return "udp"
	case kProcName:
		return "curl"
	case kProcPath:
		return "/usr/bin/curl"
	case kUID:
		return "1000"
	case kInType:
		return "tun"
	case kInName:
		return "exec:curl"
	case kInUser:
		return "alice"
	}
	return "payload"
}

func unknownType(name string, topLevel bool) *problem {
	names := ruleTypeNames()
	hint := "expected one of " + strings.Join(names, ", ")
	if s := closest(name, names); s != "" {
		hint = "did you mean " + s + "? " + hint
	}
	if name == "GEOIP" || name == "GEOSITE" || name == "IP-ASN" {
		hint = name + " is not supported; use IP-CIDR rules or a RULE-SET file of domains and CIDRs"
	}
	if name == "" {
		return newProblem(hint, nil, "missing rule type")
	}
	if !topLevel && strings.HasPrefix(name, "(") {
		return newProblem("expected (TYPE,payload) groups like ((DOMAIN,example.com),(NETWORK,udp))", nil, "unbalanced parentheses")
	}
	return newProblem(hint, nil, "unknown rule type %q", name)
}

// target checks a rule's target.
func (p *parser) target(name string) (Action, *problem) {
	switch strings.ToUpper(name) {
	case "DIRECT":
		return Action{Kind: Direct}, nil
	case "REJECT":
		return Action{Kind: Reject}, nil
	case "REJECT-DROP":
		return Action{Kind: RejectDrop}, nil
	}
	if name == "" {
		return Action{}, newProblem("expected DIRECT, REJECT, REJECT-DROP or a proxy name", nil, "missing target")
	}
	known := true
	switch {
	case p.opts.Targets != nil:
		known = p.opts.Targets(name)
	case p.opts.TargetNames != nil:
		known = false
		for _, n := range p.opts.TargetNames {
			if n == name {
				known = true
				break
			}
		}
	}
	if known {
		return Action{Kind: Proxy, Target: name}, nil
	}
	names := append([]string{"DIRECT", "REJECT", "REJECT-DROP"}, p.opts.TargetNames...)
	list := names
	if len(list) > 23 {
		list = append(list[:23:23], "...")
	}
	hint := "known: " + strings.Join(list, ", ")
	if s := closest(name, names); s != "" {
		hint = "did you mean " + s + "? " + hint
	}
	return Action{}, newProblem(hint, nil, "unknown target %q", name)
}

// targetAfter reads ",TARGET" after a logic rule's parenthesised payload.
func targetAfter(typName, after string) (string, *problem) {
	after = strings.TrimSpace(after)
	hint := "expected " + typName + ",((TYPE,payload),(TYPE,payload)),TARGET"
	if !strings.HasPrefix(after, ",") {
		if after == "" {
			return "", newProblem(hint, nil, "missing target")
		}
		return "", newProblem(hint, nil, "unexpected %q after the conditions of %s", after, typName)
	}
	fields := stripParams(splitFields(after[1:]))
	if len(fields) != 1 || strings.ContainsAny(fields[0], "()") {
		return "", newProblem(hint, nil, "unbalanced parentheses in %s or extra fields after its target: %q", typName, after[1:])
	}
	return fields[0], nil
}

// matchParen returns the index of the ')' closing the '(' at s[0], or -1.
func matchParen(s string) int {
	depth := 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '(':
			depth++
		case ')':
			depth--
			if depth == 0 {
				return i
			}
		}
	}
	return -1
}

// parseLogic parses the "((A),(B))" payload of AND/OR/NOT at the start of
// s, returning what follows it.
func parseLogic(k kind, typName, s string, depth int) (*cond, string, *problem) {
	hint := "expected " + typName + ",((TYPE,payload),(TYPE,payload))"
	if k == kNot {
		hint = "expected NOT,((TYPE,payload))"
	}
	if depth >= maxDepth {
		return nil, "", newProblem("flatten the rule", nil, "AND/OR/NOT nested deeper than %d", maxDepth)
	}
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, "(") {
		return nil, "", newProblem(hint, nil, "%s needs its conditions in parentheses", typName)
	}
	end := matchParen(s)
	if end < 0 {
		return nil, "", newProblem(hint, nil, "unbalanced parentheses in %s: missing ')'", typName)
	}
	inner, after := s[1:end], s[end+1:]
	c := &cond{kind: k}
	for rest := strings.TrimSpace(inner); rest != ""; {
		if rest[0] != '(' {
			return nil, "", newProblem(hint, nil, "%s condition %q is not in parentheses", typName, cutText(rest))
		}
		e := matchParen(rest)
		if e < 0 {
			return nil, "", newProblem(hint, nil, "unbalanced parentheses in %s: missing ')'", typName)
		}
		sub, pr := parseCond(rest[1:e], depth+1, false)
		if pr != nil {
			return nil, "", pr
		}
		c.subs = append(c.subs, sub)
		rest = strings.TrimSpace(rest[e+1:])
		if rest == "" {
			break
		}
		if rest[0] != ',' {
			return nil, "", newProblem(hint, nil, "expected ',' between %s conditions, found %q", typName, cutText(rest))
		}
		rest = strings.TrimSpace(rest[1:])
		if rest == "" {
			return nil, "", newProblem(hint, nil, "trailing ',' in %s", typName)
		}
	}
	switch {
	case len(c.subs) == 0:
		return nil, "", newProblem(hint, nil, "%s has no conditions", typName)
	case k == kNot && len(c.subs) != 1:
		return nil, "", newProblem(hint, nil, "NOT takes exactly one condition, got %d", len(c.subs))
	}
	return c, after, nil
}

func cutText(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// parseCond parses a rule without target: inside AND/OR/NOT, or a line of
// a RULE-SET file.
func parseCond(text string, depth int, inSet bool) (*cond, *problem) {
	text = strings.TrimSpace(text)
	typ, rest, hasComma := strings.Cut(text, ",")
	typName := strings.ToUpper(strings.TrimSpace(typ))
	k, ok := ruleKind(typName)
	if !ok {
		return nil, unknownType(typName, false)
	}
	where := "inside AND/OR/NOT"
	if inSet {
		where = "in a RULE-SET file"
	}
	switch k {
	case kMatch:
		return nil, newProblem("drop it, or use a top-level MATCH,TARGET", nil, "MATCH is not allowed %s", where)
	case kRuleSet:
		return nil, newProblem("list the set's lines here, or use a top-level RULE-SET rule", nil, "RULE-SET is not allowed %s", where)
	case kAnd, kOr, kNot:
		c, after, pr := parseLogic(k, typName, rest, depth)
		if pr != nil {
			return nil, pr
		}
		if strings.TrimSpace(after) != "" {
			return nil, newProblem("conditions "+where+" carry no target", nil, "unexpected %q after %s conditions", cutText(strings.TrimSpace(after)), typName)
		}
		return c, nil
	}
	hint := fmt.Sprintf("expected %s,%s with no target %s", typName, example(k), where)
	if !hasComma {
		return nil, newProblem(hint, nil, "%s needs a payload", typName)
	}
	fields := stripParams(splitFields(rest))
	if len(fields) > 1 && k != kRegex {
		return nil, newProblem(hint, nil, "unexpected extra field %q", fields[1])
	}
	return simpleCond(k, typName, strings.Join(fields, ","))
}

// simpleCond builds a non-logic condition from its payload.
func simpleCond(k kind, typName, payload string) (*cond, *problem) {
	payload = strings.TrimSpace(payload)
	c := &cond{kind: k}
	switch k {
	case kDomain:
		d, pr := normDomain(payload)
		if pr != nil {
			return nil, pr
		}
		c.str = d
	case kSuffix:
		s := strings.TrimPrefix(strings.TrimPrefix(payload, "+"), ".")
		d, pr := normDomain(s)
		if pr != nil {
			return nil, pr
		}
		c.str = d
	case kKeyword:
		if payload == "" {
			return nil, newProblem("expected DOMAIN-KEYWORD,word", nil, "empty keyword")
		}
		if pr := asciiOnly("keyword", typName, payload); pr != nil {
			return nil, pr
		}
		c.str = strings.ToLower(payload)
	case kRegex:
		if payload == "" {
			return nil, newProblem("expected DOMAIN-REGEX,"+example(k), nil, "empty regular expression")
		}
		if pr := asciiOnly("regular expression", typName, payload); pr != nil {
			return nil, pr
		}
		re, err := regexp.Compile(payload)
		if err != nil {
			return nil, newProblem("expected Go (RE2) syntax matched against the lower-case domain", err, "bad regular expression %q: %v", payload, err)
		}
		c.re = re
	case kIPCIDR, kSrcIPCIDR:
		pfx, pr := parseCIDR(payload)
		if pr != nil {
			return nil, pr
		}
		c.pfx = pfx
	case kDstPort, kSrcPort:
		r, pr := parseRanges(payload, 65535, "port")
		if pr != nil {
			return nil, pr
		}
		c.ranges = r
	case kUID:
		r, pr := parseRanges(payload, 1<<32-1, "uid")
		if pr != nil {
			return nil, pr
		}
		c.ranges = r
	case kNetwork:
		n := strings.ToLower(payload)
		if n != "tcp" && n != "udp" {
			return nil, newProblem("expected NETWORK,tcp or NETWORK,udp", nil, "unknown network %q", payload)
		}
		c.str = n
	case kProcName:
		if payload == "" {
			return nil, newProblem("expected PROCESS-NAME,curl", nil, "empty process name")
		}
		if strings.ContainsAny(payload, `/\`) {
			return nil, newProblem("use PROCESS-PATH for a full path, or give the base name", nil, "process name %q contains a path separator", payload)
		}
		c.str = payload
	case kProcPath:
		if payload == "" {
			return nil, newProblem("expected PROCESS-PATH,/usr/bin/curl", nil, "empty process path")
		}
		c.str = payload
	case kInType:
		t := strings.ToLower(payload)
		switch t {
		case InTUN, InWireGuard, InExec, InGateway, InSocks:
		default:
			hint := "expected IN-TYPE with one of " + strings.Join(inTypes, ", ")
			if s := closest(t, inTypes); s != "" {
				hint = "did you mean " + s + "? " + hint
			}
			return nil, newProblem(hint, nil, "unknown inbound type %q", payload)
		}
		c.str = t
	case kInName, kInUser:
		if payload == "" {
			what := "inbound name"
			if k == kInUser {
				what = "inbound user"
			}
			return nil, newProblem(fmt.Sprintf("expected %s,%s", typName, example(k)), nil, "empty %s", what)
		}
		c.str = payload
	default:
		return nil, newProblem("", nil, "%s cannot be used here", typName)
	}
	return c, nil
}

// inTypes are the inbound types of IN-TYPE rules, as errors list them.
var inTypes = []string{InTUN, InWireGuard, InExec, InGateway, InSocks}

// normDomain validates and normalises a domain: lower case, no trailing dot.
func normDomain(s string) (string, *problem) {
	s = strings.TrimSpace(s)
	d := strings.ToLower(strings.TrimSuffix(s, "."))
	hint := "expected a domain like example.com"
	if d == "" {
		return "", newProblem(hint, nil, "empty domain")
	}
	if len(d) > maxDomain {
		return "", newProblem(hint, nil, "domain longer than %d bytes", maxDomain)
	}
	if strings.HasPrefix(d, ".") || strings.HasSuffix(d, ".") || strings.Contains(d, "..") {
		return "", newProblem(hint, nil, "domain %q has an empty label", s)
	}
	for i := 0; i < len(d); i++ {
		c := d[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_', c == '.', c >= 0x80:
		case c == '*':
			return "", newProblem("use DOMAIN-SUFFIX,example.com (or +.example.com in a RULE-SET file)", nil, "wildcard in domain %q", s)
		default:
			return "", newProblem(hint, nil, "invalid character %q in domain %q", c, s)
		}
	}
	// Queries carry internationalised names in their ASCII (xn--) form:
	// compile the rule in that form, or no query would ever match it.
	a, err := idn.ASCII(d)
	if err != nil {
		return "", newProblem("write the name as it is registered (like bücher.de) or in its ASCII form (like xn--bcher-kva.de)", err, "domain %q: %v", s, err)
	}
	if len(a) > maxDomain {
		return "", newProblem(hint, nil, "domain %q is longer than %d bytes in its ASCII form %s", s, maxDomain, a)
	}
	return a, nil
}

// asciiOnly refuses a keyword or regular expression with non-ASCII
// characters: names are matched in the ASCII (xn--) form queries carry, so
// such a pattern could never match. what is "keyword" or "regular
// expression".
func asciiOnly(what, typName, payload string) *problem {
	for i := 0; i < len(payload); i++ {
		if payload[i] >= 0x80 {
			hint := "names are matched in the ASCII form DNS carries (bücher.de arrives as xn--bcher-kva.de): use DOMAIN-SUFFIX,bücher.de or DOMAIN,bücher.de, which are converted, or write the label in its xn-- form"
			if what == "keyword" {
				if a, err := idn.ASCII(strings.ToLower(payload)); err == nil {
					hint += fmt.Sprintf(" (a whole label %s is %s)", payload, a)
				}
			}
			return newProblem(hint, nil, "non-ASCII %s %q in %s", what, payload, typName)
		}
	}
	return nil
}

// parseCIDR parses an address/length, masking host bits and turning
// IPv4-mapped IPv6 prefixes into IPv4 ones.
func parseCIDR(s string) (netip.Prefix, *problem) {
	hint := "expected an address/length like 10.0.0.0/8 or 2001:db8::/32"
	pfx, err := netip.ParsePrefix(s)
	if err != nil {
		if a, aerr := netip.ParseAddr(s); aerr == nil {
			bits := 32
			if a.Is6() {
				bits = 128
			}
			return netip.Prefix{}, newProblem(fmt.Sprintf("write %s/%d for a single address", s, bits), err, "bad CIDR %q: missing /length", s)
		}
		return netip.Prefix{}, newProblem(hint, err, "bad CIDR %q: %v", s, err)
	}
	if pfx.Addr().Is4In6() && pfx.Bits() >= 96 {
		pfx = netip.PrefixFrom(pfx.Addr().Unmap(), pfx.Bits()-96)
	}
	return pfx.Masked(), nil
}

// parseRanges parses "80", "1000-2000" or "80/443/8000-9000".
func parseRanges(s string, max uint64, what string) ([]numRange, *problem) {
	hint := fmt.Sprintf("expected a %s (0-%d), a range like 1000-2000, or a list like 80/443/8000-9000", what, max)
	if s == "" {
		return nil, newProblem(hint, nil, "empty %s", what)
	}
	var out []numRange
	for _, part := range strings.Split(s, "/") {
		part = strings.TrimSpace(part)
		loS, hiS, isRange := strings.Cut(part, "-")
		if isRange && (strings.TrimSpace(loS) == "" || strings.TrimSpace(hiS) == "") {
			return nil, newProblem(hint, nil, "bad %s range %q", what, part)
		}
		lo, pr := parseNum(loS, max, what, hint)
		if pr != nil {
			return nil, pr
		}
		hi := lo
		if isRange {
			if hi, pr = parseNum(hiS, max, what, hint); pr != nil {
				return nil, pr
			}
			if lo > hi {
				return nil, newProblem(hint, nil, "bad %s range %q: %d > %d", what, part, lo, hi)
			}
		}
		out = append(out, numRange{uint32(lo), uint32(hi)})
	}
	return out, nil
}

func parseNum(s string, max uint64, what, hint string) (uint64, *problem) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, newProblem(hint, nil, "empty %s", what)
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		if ne := (*strconv.NumError)(nil); errors.As(err, &ne) && errors.Is(ne.Err, strconv.ErrRange) {
			return 0, newProblem(hint, nil, "%s %s out of range", what, s)
		}
		return 0, newProblem(hint, nil, "bad %s %q", what, s)
	}
	if v > max {
		return 0, newProblem(hint, nil, "%s %d out of range", what, v)
	}
	return v, nil
}

// setFile is a parsed RULE-SET file.
type setFile struct {
	name    string // path as written, for explain and errors
	entries []setEntry
}

type setEntry struct {
	c    *cond
	text string
	line int
}

// loadSet reads and parses a RULE-SET file once per parse. It returns
// (nil, nil) when the file's own lines had errors, which are reported
// with the set file's name and line.
func (p *parser) loadSet(path, fromFile string) (*setFile, *problem) {
	var (
		rc  io.ReadCloser
		err error
		key = path
	)
	if p.opts.RuleSetLoader != nil {
		if s, ok := p.sets[key]; ok {
			return s, nil
		}
		rc, err = p.opts.RuleSetLoader(path)
	} else {
		if !filepath.IsAbs(path) {
			base := p.opts.BaseDir
			if base == "" {
				base = filepath.Dir(fromFile)
			}
			key = filepath.Join(base, path)
		}
		if s, ok := p.sets[key]; ok {
			return s, nil
		}
		rc, err = os.Open(key)
	}
	if err != nil {
		return nil, newProblem("check the path; relative paths are resolved against the config's directory", err, "RULE-SET %q: %v", path, err)
	}
	defer rc.Close()
	set := &setFile{name: path}
	nerr, last := len(p.errs), 0
	err = scanLines(rc, func(n int, raw string) bool {
		last = n
		text := setLineText(raw)
		if text == "" {
			return true
		}
		c, pr := parseSetLine(text)
		if pr != nil {
			p.fail(path, n, pr)
			return len(p.errs) < maxErrors
		}
		set.entries = append(set.entries, setEntry{c: c, text: text, line: n})
		return true
	})
	if err != nil {
		p.errs = append(p.errs, annotateScanErr(err, path, last+1))
		return nil, nil
	}
	if len(p.errs) > nerr {
		return nil, nil
	}
	p.sets[key] = set
	return set, nil
}

// setLineText strips comments, blank lines and the YAML "payload:" list
// form of Clash rule providers ("  - '+.example.com'").
func setLineText(raw string) string {
	t := strings.TrimSpace(raw)
	if t == "" || t[0] == '#' || strings.HasPrefix(t, "//") || t == "payload:" {
		return ""
	}
	if strings.HasPrefix(t, "- ") || t == "-" {
		t = strings.TrimSpace(t[1:])
		if len(t) >= 2 && (t[0] == '\'' || t[0] == '"') && t[len(t)-1] == t[0] {
			t = strings.TrimSpace(t[1 : len(t)-1])
		}
	}
	return t
}

// parseSetLine auto-detects one RULE-SET line: a rule without target
// (TYPE,payload), a CIDR or address, or a domain: "example.com" (exact),
// "+.example.com" or ".example.com" (the domain and its subdomains),
// "*.example.com" (exactly one label more).
func parseSetLine(t string) (*cond, *problem) {
	if strings.Contains(t, ",") {
		return parseCond(t, 0, true)
	}
	if pfx, err := netip.ParsePrefix(t); err == nil {
		if pfx.Addr().Is4In6() && pfx.Bits() >= 96 {
			pfx = netip.PrefixFrom(pfx.Addr().Unmap(), pfx.Bits()-96)
		}
		return &cond{kind: kIPCIDR, pfx: pfx.Masked()}, nil
	}
	if a, err := netip.ParseAddr(t); err == nil && a.Zone() == "" {
		a = a.Unmap()
		return &cond{kind: kIPCIDR, pfx: netip.PrefixFrom(a, a.BitLen())}, nil
	}
	k, d := kDomain, t
	switch {
	case strings.HasPrefix(t, "+."):
		k, d = kSuffix, t[2:]
	case strings.HasPrefix(t, "*."):
		k, d = kWildcard, t[2:]
	case strings.HasPrefix(t, "."):
		k, d = kSuffix, t[1:]
	}
	if strings.ContainsAny(t, "/:") {
		if _, err := netip.ParsePrefix(t); err != nil {
			return nil, newProblem("expected an address/length like 10.0.0.0/8", err, "bad CIDR %q: %v", t, err)
		}
	}
	nd, pr := normDomain(d)
	if pr != nil {
		pr.hint = "expected example.com, +.example.com, .example.com, *.example.com, 10.0.0.0/8 or TYPE,payload"
		return nil, pr
	}
	return &cond{kind: k, str: nd}, nil
}

// closest returns the candidate nearest to s by edit distance, if near.
func closest(s string, cands []string) string {
	best, bestD := suggest.Closest(s, cands, strings.ToUpper)
	if bestD == 0 || bestD > 2 || bestD > len(s)/2 {
		if bestD == 0 && best != s {
			return best
		}
		return ""
	}
	return best
}
