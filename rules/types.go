package rules

import (
	"net/netip"
	"strconv"
	"strings"
)

// Metadata is what the rules see of one flow.
type Metadata struct {
	Network  string         // "tcp" | "udp"
	Src, Dst netip.AddrPort // Dst's address is ignored by IP rules when Host is set, unless RealDst
	Host     string         // domain from fake-IP, a SOCKS domain request or sniffing; "" when unknown
	Process  string         // executable path, when known
	UID      int            // -1 when unknown
	PID      int            // the process's id when a lookup found it; 0 when unknown

	// The inbound the flow came in through; "" when unknown or none.
	InType string // InTUN, InWireGuard, InExec, InGateway or InSocks
	InName string // the inbound's name: the TUN device's, "wg", "exec:curl", "socks"
	InUser string // the user behind it: a WireGuard peer's name, a SOCKS username

	// RealDst says Dst's address is where the flow really goes although
	// Host is set (a name sniffed from the flow's first bytes), so IP rules
	// match it as well as domain rules match Host.
	RealDst bool
}

// Inbound types, the values of Metadata.InType and of IN-TYPE rules.
const (
	InTUN       = "tun"
	InWireGuard = "wireguard"
	InExec      = "exec"
	InGateway   = "gateway"
	InSocks     = "socks"
)

// ProcessLookup finds the executable path and user id of the local process
// that owns a flow. Match consults it lazily: only when a PROCESS-NAME,
// PROCESS-PATH or UID rule is reached and Metadata does not already carry the
// answer, and at most once per Match call.
type ProcessLookup func(m *Metadata) (path string, uid int, ok bool)

// ActionKind says what happens to a flow.
type ActionKind uint8

// Action kinds. The zero value is Direct.
const (
	Direct     ActionKind = iota // dial the destination directly
	Reject                       // refuse at once (TCP RST)
	RejectDrop                   // drop silently
	Proxy                        // carry through the outbound named by Action.Target
)

func (k ActionKind) String() string {
	switch k {
	case Direct:
		return "DIRECT"
	case Reject:
		return "REJECT"
	case RejectDrop:
		return "REJECT-DROP"
	case Proxy:
		return "PROXY"
	}
	return "ActionKind(" + strconv.Itoa(int(k)) + ")"
}

// Action is a rule's target.
type Action struct {
	Kind   ActionKind
	Target string // proxy or chain name, for Proxy
}

// String returns the target as written in a rule: DIRECT, REJECT,
// REJECT-DROP or the proxy name.
func (a Action) String() string {
	if a.Kind == Proxy {
		return a.Target
	}
	return a.Kind.String()
}

// Match is the outcome of Ruleset.Match.
type Match struct {
	Action Action
	Rule   string // the rule as written; "" when no rule matched
	Source string // file:line of the rule; "" when no rule matched
	// Type and Payload are the rule's keyword (DOMAIN-SUFFIX...) and what
	// it matches, as Ruleset.Rules lists them; "" when no rule matched.
	Type, Payload string
	Index         int // position of the rule in the rule list (0-based); -1 when no rule matched

	// For a RULE-SET rule: the line of the set file that matched, and where.
	Entry       string
	EntrySource string
}

// Matched reports whether a rule matched (otherwise the action is the
// default, DIRECT).
func (m Match) Matched() bool { return m.Index >= 0 }

// String explains the match for logs and `tunsocks explain`, e.g.
//
//	corp by rule #3 "RULE-SET,geo.txt,corp" (rules.txt:4) via "+.example.com" (geo.txt:12)
func (m Match) String() string {
	if !m.Matched() {
		return m.Action.String() + " (no rule matched; default)"
	}
	var b strings.Builder
	b.WriteString(m.Action.String())
	b.WriteString(" by rule #")
	b.WriteString(strconv.Itoa(m.Index + 1))
	b.WriteString(" ")
	b.WriteString(strconv.Quote(m.Rule))
	if m.Source != "" {
		b.WriteString(" (" + m.Source + ")")
	}
	if m.Entry != "" {
		b.WriteString(" via ")
		b.WriteString(strconv.Quote(m.Entry))
		if m.EntrySource != "" {
			b.WriteString(" (" + m.EntrySource + ")")
		}
	}
	return b.String()
}

// Line is one rule with its origin, for callers (such as the YAML config)
// that know each rule's own line number.
type Line struct {
	Text string
	File string
	Line int
}
