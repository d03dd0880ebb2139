package main

import (
	"net"
	"strconv"
	"time"

	"github.com/tunsocks/tunsocks/config"
	"github.com/tunsocks/tunsocks/policy"
	"github.com/tunsocks/tunsocks/router"
	"github.com/tunsocks/tunsocks/rules"
)

// explained is `tunsocks explain --json`: a flow, the rule that decides it
// and the outbound that carries it.
type explained struct {
	Flow explainedFlow `json:"flow"`
	explainedDecision
}

// explainedFlow is what the rules see of a flow.
type explainedFlow struct {
	Network string           `json:"network"`
	Src     string           `json:"src"`
	Dst     string           `json:"dst"` // host:port, the name when known
	Addr    string           `json:"addr,omitempty"`
	Process string           `json:"process,omitempty"`
	UID     *int             `json:"uid,omitempty"`
	Inbound explainedInbound `json:"inbound"`
}

type explainedInbound struct {
	Type string `json:"type"`
	Name string `json:"name"`
	User string `json:"user,omitempty"`
}

// explainedDecision is a decision: the rule (null when none matched or
// there are none) and the outbound.
type explainedDecision struct {
	Rule     *explainedRule    `json:"rule"`
	Outbound explainedOutbound `json:"outbound"`
	Summary  string            `json:"summary"` // as explain prints the rule
}

type explainedRule struct {
	Number      int    `json:"number"` // 1-based, as explain prints it
	Text        string `json:"text"`
	Source      string `json:"source"`
	Entry       string `json:"entry,omitempty"` // the RULE-SET line that matched
	EntrySource string `json:"entrySource,omitempty"`
}

type explainedOutbound struct {
	Name        string `json:"name"` // DIRECT, REJECT, REJECT-DROP or the proxy's name
	Description string `json:"description"`
}

func explainDecision(cfg *config.Config, d router.Decision, mt *rules.Match) explainedDecision {
	e := explainedDecision{Summary: d.Rule, Outbound: explainedOutbound{Name: decisionName(d), Description: describe(cfg, d)}}
	if mt != nil && mt.Index >= 0 {
		e.Rule = &explainedRule{Number: mt.Index + 1, Text: mt.Rule, Source: mt.Source, Entry: mt.Entry, EntrySource: mt.EntrySource}
	}
	return e
}

func decisionName(d router.Decision) string {
	switch d.Action {
	case router.Reject:
		return "REJECT"
	case router.RejectDrop:
		return "REJECT-DROP"
	}
	return d.Outbound.Name()
}

func explainedFlowOf(m *rules.Metadata, dst string) explainedFlow {
	f := explainedFlow{Network: m.Network, Src: m.Src.String(), Dst: dst, Process: m.Process,
		Inbound: explainedInbound{Type: m.InType, Name: m.InName, User: m.InUser}}
	if m.UID >= 0 {
		uid := m.UID
		f.UID = &uid
	}
	return f
}

// explainedOpen is GET /connections/{id}/explain: an open flow, the
// decision it got when it opened, and the one the policy and mode in force
// would give it now (they differ after a reload or a mode change).
type explainedOpen struct {
	ID    string            `json:"id"`
	Start time.Time         `json:"start"`
	Flow  explainedFlow     `json:"flow"`
	At    explainedDecision `json:"decided"`
	Now   explainedDecision `json:"now"`
	Mode  string            `json:"mode"`
}

func explainFlowNow(f router.FlowInfo, cfg *config.Config, live *policy.Live) explainedOpen {
	m := &rules.Metadata{Network: f.Network, Src: f.Src, Dst: f.Dst, Host: f.Host, Process: f.Process, UID: f.UID,
		InType: f.InType, InName: f.InName, InUser: f.InUser}
	dst := f.Dst.String()
	if f.Host != "" {
		dst = net.JoinHostPort(f.Host, strconv.Itoa(int(f.Dst.Port())))
	}
	e := explainedOpen{ID: f.ID, Start: f.Start, Flow: explainedFlowOf(m, dst), Mode: live.Mode().String()}
	if f.Host != "" && f.Dst.Addr().IsValid() {
		e.Flow.Addr = f.Dst.String()
	}
	e.At = explainedDecision{Summary: f.Rule, Outbound: explainedOutbound{Name: f.Outbound, Description: f.Outbound}}
	if f.Outbound != "DNS" {
		if o, ok := live.Policy().Outbound(f.Outbound); ok {
			e.At.Outbound.Description = describe(cfg, router.Decision{Action: router.Proxy, Outbound: o})
		}
	} else {
		e.At.Outbound.Description = "DNS (answered by tunsocks itself)"
	}
	if mt := f.Match; mt != nil && mt.Index >= 0 {
		e.At.Rule = &explainedRule{Number: mt.Index + 1, Text: mt.Rule, Source: mt.Source, Entry: mt.Entry, EntrySource: mt.EntrySource}
	}
	d, mt := live.Match(m)
	e.Now = explainDecision(cfg, d, &mt)
	return e
}
