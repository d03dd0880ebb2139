package api

import (
	"net/netip"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The JSON shapes of the Clash API as mihomo serves them (hub/route,
// tunnel/statistic/tracker.go, constant/metadata.go) and metacubexd's
// types/index.ts reads them. tunsocks' own additions sit in fields the
// dashboards ignore.

type connectionsJSON struct {
	DownloadTotal int64            `json:"downloadTotal"`
	UploadTotal   int64            `json:"uploadTotal"`
	Connections   []connectionJSON `json:"connections"`
	Memory        uint64           `json:"memory"`
}

type connectionJSON struct {
	ID          string       `json:"id"`
	Metadata    metadataJSON `json:"metadata"`
	Upload      int64        `json:"upload"`
	Download    int64        `json:"download"`
	Start       time.Time    `json:"start"`
	Chains      []string     `json:"chains"`
	Rule        string       `json:"rule"`
	RulePayload string       `json:"rulePayload"`
}

// metadataJSON: ports are strings, as in mihomo (`json:",string"`).
type metadataJSON struct {
	Network           string `json:"network"`
	Type              string `json:"type"`
	SourceIP          string `json:"sourceIP"`
	DestinationIP     string `json:"destinationIP"`
	SourcePort        string `json:"sourcePort"`
	DestinationPort   string `json:"destinationPort"`
	InboundIP         string `json:"inboundIP"`
	InboundPort       string `json:"inboundPort"`
	InboundName       string `json:"inboundName"`
	InboundUser       string `json:"inboundUser"`
	Host              string `json:"host"`
	DNSMode           string `json:"dnsMode"`
	UID               int    `json:"uid"`
	Process           string `json:"process"`
	ProcessPath       string `json:"processPath"`
	SpecialProxy      string `json:"specialProxy"`
	SpecialRules      string `json:"specialRules"`
	RemoteDestination string `json:"remoteDestination"`
	DSCP              int    `json:"dscp"`
	SniffHost         string `json:"sniffHost"`

	// tunsocks: the rule that decided the flow as explain says it, the
	// upstream proxy it goes through, and the address the outbound was
	// asked for.
	TunsocksRule string   `json:"tunsocksRule"`
	PID          int      `json:"tunsocksPid,omitempty"`
	UpstreamAddr string   `json:"upstreamAddr"`
	Target       string   `json:"tunsocksTarget"`
	Chain        []string `json:"tunsocksChain,omitempty"`
}

// inboundTypes are the Clash names of tunsocks' inbound types.
var inboundTypes = map[string]string{
	"tun": "Tun", "wireguard": "WireGuard", "exec": "Exec", "gateway": "Gateway", "socks": "Socks5",
}

func connection(f Flow) connectionJSON {
	c := connectionJSON{
		ID:       f.ID,
		Upload:   f.Up,
		Download: f.Down,
		Start:    f.Start.UTC(),
		Chains:   []string{f.Outbound},
		Rule:     ClashRuleType(f.RuleType),
	}
	if f.RuleType != "" {
		c.RulePayload = f.RulePayload
	}
	m := metadataJSON{
		Network:           f.Network,
		Type:              inboundTypes[f.InType],
		SourceIP:          addrString(f.Src),
		SourcePort:        strconv.Itoa(int(f.Src.Port())),
		DestinationIP:     addrString(f.Dst),
		DestinationPort:   strconv.Itoa(int(f.Dst.Port())),
		InboundPort:       "0",
		InboundName:       f.InName,
		InboundUser:       f.InUser,
		Host:              f.Host,
		DNSMode:           "normal",
		UID:               f.UID,
		ProcessPath:       f.Process,
		RemoteDestination: f.Remote,
		Target:            f.Target,
		TunsocksRule:      f.RuleLine,
		PID:               f.PID,
		UpstreamAddr:      f.Upstream,
		Chain:             f.Chain,
	}
	if m.Type == "" && f.InType != "" {
		m.Type = f.InType
	}
	if f.FakeIP {
		m.DNSMode = "fakeip"
	}
	if f.Process != "" {
		m.Process = path.Base(strings.ReplaceAll(f.Process, `\`, "/"))
	}
	c.Metadata = m
	return c
}

// addrString is ap's address, "" when there is none (a flow asked for
// by name).
func addrString(ap netip.AddrPort) string {
	if !ap.Addr().IsValid() {
		return ""
	}
	return ap.Addr().Unmap().String()
}

// ClashRuleType is the Clash API's name for a rule keyword (mihomo's
// RuleType strings: DOMAIN-SUFFIX is DomainSuffix, PROCESS-NAME is
// Process...). "" stays "" (no rule matched); an unknown keyword is
// returned as it is.
func ClashRuleType(keyword string) string {
	if t, ok := clashRuleTypes[strings.ToUpper(keyword)]; ok {
		return t
	}
	return keyword
}

var clashRuleTypes = map[string]string{
	"DOMAIN":         "Domain",
	"DOMAIN-SUFFIX":  "DomainSuffix",
	"DOMAIN-KEYWORD": "DomainKeyword",
	"DOMAIN-REGEX":   "DomainRegex",
	"IP-CIDR":        "IPCIDR",
	"IP-CIDR6":       "IPCIDR",
	"SRC-IP-CIDR":    "SrcIPCIDR",
	"DST-PORT":       "DstPort",
	"SRC-PORT":       "SrcPort",
	"NETWORK":        "Network",
	"PROCESS-NAME":   "Process",
	"PROCESS-PATH":   "ProcessPath",
	"UID":            "Uid",
	"IN-TYPE":        "InType",
	"IN-NAME":        "InName",
	"IN-USER":        "InUser",
	"RULE-SET":       "RuleSet",
	"AND":            "AND",
	"OR":             "OR",
	"NOT":            "NOT",
	"MATCH":          "Match",
	"FINAL":          "Match",
}

type delayEntry struct {
	Time  time.Time `json:"time"`
	Delay int       `json:"delay"` // ms; 0 for a failed test
}

type proxyJSON struct {
	Name    string       `json:"name"`
	Type    string       `json:"type"`
	UDP     bool         `json:"udp"`
	XUDP    bool         `json:"xudp"`
	TFO     bool         `json:"tfo"`
	Alive   bool         `json:"alive"`
	Hidden  bool         `json:"hidden"`
	History []delayEntry `json:"history"`
	Extra   struct{}     `json:"extra"`
	All     []string     `json:"all,omitempty"`
	Now     string       `json:"now,omitempty"`
	// tunsocks
	Server string   `json:"server,omitempty"`
	Chain  []string `json:"chain,omitempty"`
	Flows  uint64   `json:"flows"`
	Up     int64    `json:"up"`
	Down   int64    `json:"down"`
}

type ruleJSON struct {
	Index   int           `json:"index"`
	Type    string        `json:"type"`
	Payload string        `json:"payload"`
	Proxy   string        `json:"proxy"`
	Size    int           `json:"size"`
	Extra   ruleExtraJSON `json:"extra"`
	// tunsocks
	Line   string `json:"line"`
	Source string `json:"source"`
}

type ruleExtraJSON struct {
	Disabled  bool      `json:"disabled"`
	HitCount  uint64    `json:"hitCount"`
	HitAt     time.Time `json:"hitAt"`
	MissCount uint64    `json:"missCount"`
	MissAt    time.Time `json:"missAt"`
}

func rule(r Rule) ruleJSON {
	return ruleJSON{
		Index: r.Index, Type: ClashRuleType(r.Type), Payload: r.Payload, Proxy: r.Target, Size: r.Size,
		Extra: ruleExtraJSON{HitCount: r.Hits, HitAt: r.HitAt.UTC()},
		Line:  r.Line, Source: r.Source,
	}
}

// sortFlows orders flows oldest first, by id among equals, so the
// snapshot is stable.
func sortFlows(fs []Flow) {
	slices.SortFunc(fs, func(a, b Flow) int {
		if c := a.Start.Compare(b.Start); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
}
