package router

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tunsocks/tunsocks/metrics"
)

// RuleHits counts the flows one rule decided. The decider hands one with
// each Decision (Decision.Hits); the router counts a flow once, when it
// opens, however many datagrams of it are decided.
type RuleHits struct {
	n    atomic.Uint64
	last atomic.Int64 // UnixNano of the last hit
}

// Hit counts one flow now.
func (h *RuleHits) Hit() {
	if h == nil {
		return
	}
	h.n.Add(1)
	h.last.Store(time.Now().UnixNano())
}

// Count is the number of flows counted and when the last one was (zero
// when none).
func (h *RuleHits) Count() (n uint64, last time.Time) {
	if h == nil {
		return 0, time.Time{}
	}
	n = h.n.Load()
	if ns := h.last.Load(); ns != 0 {
		last = time.Unix(0, ns)
	}
	return n, last
}

// routerMetrics are the router's families in the registry.
type routerMetrics struct {
	flows      *metrics.CounterVec   // network, inbound, outbound, rule_type
	dial       *metrics.HistogramVec // outbound, result
	dialErrors *metrics.CounterVec   // outbound, reason
}

func (r *Router) registerMetrics(reg *metrics.Registry) {
	r.m = routerMetrics{
		flows: reg.Counter("tunsocks_connections_total",
			"Flows opened (TCP connections and UDP flows), rejected ones included (outbound REJECT or REJECT-DROP).",
			"network", "inbound", "outbound", "rule_type"),
		dial: reg.Histogram("tunsocks_dial_duration_seconds",
			"Time to reach an outbound: a TCP connection through it, or a UDP session on it.",
			metrics.DurationBuckets, "outbound", "result"),
		dialErrors: reg.Counter("tunsocks_dial_errors_total",
			"Failed dials of an outbound, by cause: refused, timeout, auth, unreachable, proto (the upstream spoke badly or refused by rule), other.",
			"outbound", "reason"),
	}
	reg.GaugeFunc("tunsocks_connections_active", "Flows open now.", []string{"network", "inbound"}, func(emit metrics.Emit) {
		for _, e := range r.table.entries() {
			emit(1, e.info.Network, inboundLabel(e.info.InType, e.info.InName))
		}
	})
	reg.CounterFunc("tunsocks_bytes_total", "Payload bytes carried, by direction (up: app to destination) and outbound.",
		[]string{"direction", "outbound"}, func(emit metrics.Emit) {
			for name, t := range r.OutboundTotals() {
				emit(float64(t.Up), "up", name)
				emit(float64(t.Down), "down", name)
			}
		})
}

// countFlow counts a flow decided d.
func (r *Router) countFlow(network string, in flowIn, outbound string, d Decision) {
	r.m.flows.With(network, inboundLabel(in.typ, in.name), outbound, ruleType(d)).Inc()
}

// inboundLabel names an inbound in metrics: its name, else its type, else
// "none".
func inboundLabel(typ, name string) string {
	if l := inLabel(typ, name); l != "" {
		return l
	}
	return "none"
}

// ruleType is the keyword of the rule that decided d: DOMAIN-SUFFIX,
// MATCH...; "default" when no rule matched, "none" when the decider has no
// rules, "dns" for DNS answered in-process.
func ruleType(d Decision) string {
	m := d.Match
	switch {
	case d.Rule == "dns":
		return "dns"
	case m == nil:
		return "none"
	case m.Index < 0:
		return "default"
	}
	if m.Type != "" {
		return m.Type
	}
	// A decider that filled only the rule's text.
	k, _, _ := strings.Cut(m.Rule, ",")
	return strings.ToUpper(strings.TrimSpace(k))
}

// dialed records one dial of outbound: its time and, when it failed, why.
func (r *Router) dialed(outbound string, took time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "error"
		reason := ""
		if r.cfg.DialReason != nil {
			reason = r.cfg.DialReason(err)
		}
		if reason == "" {
			reason = dialReason(err)
		}
		r.m.dialErrors.With(outbound, reason).Inc()
	}
	r.m.dial.With(outbound, result).Observe(took.Seconds())
}

// dialReason classifies the common causes of a failed dial; outbounds'
// own causes (a proxy's auth or protocol failures) come through
// Config.DialReason.
func dialReason(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT),
		errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	case errors.Is(err, ErrUDPUnsupported):
		return "proto"
	}
	return "other"
}
