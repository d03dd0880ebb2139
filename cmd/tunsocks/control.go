package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tunsocks/tunsocks/api"
	"github.com/tunsocks/tunsocks/config"
	"github.com/tunsocks/tunsocks/metrics"
	"github.com/tunsocks/tunsocks/policy"
	"github.com/tunsocks/tunsocks/router"
	"github.com/tunsocks/tunsocks/stack"
)

// runState is a running `tunsocks run` as the API and SIGHUP see it: the
// router's flow table, the live policy, the config in force and how to
// read a new one. Its methods satisfy the api package's interfaces.
type runState struct {
	rt  *router.Router
	w   *wiring
	log *slog.Logger
	// load reads the config at path with the command line's flags over
	// it, as at start; nil when this run cannot reload (the demo).
	load func(path string) (*config.Config, error)
	cfg  atomic.Pointer[config.Config]
	st   atomic.Pointer[stack.Stack] // set once the stack runs
	tun  string                      // the TUN device's name

	mu         sync.Mutex // serialises reloads
	reloads    *metrics.CounterVec
	lastReload atomic.Int64 // UnixNano of the last successful reload (or the start)
}

func newRunState(rt *router.Router, w *wiring, cfg *config.Config, log *slog.Logger, reg *metrics.Registry,
	load func(string) (*config.Config, error)) *runState {
	s := &runState{rt: rt, w: w, log: log, load: load}
	s.cfg.Store(cfg)
	s.lastReload.Store(time.Now().UnixNano())
	s.reloads = reg.Counter("tunsocks_config_reloads_total", "Config reloads (SIGHUP, PUT /configs) by result: ok, or error (the old config stayed).", "result")
	reg.GaugeFunc("tunsocks_config_last_reload_success_timestamp_seconds", "When the config in force was loaded (Unix time).", nil,
		func(emit metrics.Emit) { emit(float64(s.lastReload.Load()) / 1e9) })
	return s
}

// reload re-reads the config (path "" means the file in use) and puts its
// rules and outbounds in force for new flows; open flows keep theirs. A
// config that does not load or validate is refused with its file:line
// errors and the running one stays.
func (s *runState) reload(path string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.load == nil {
		return errors.New("this run cannot reload its config")
	}
	old := s.cfg.Load()
	if path == "" {
		path = old.Path
	}
	cfg, err := s.load(path)
	if err == nil {
		var p *policy.Policy
		if p, err = s.w.buildPolicy(cfg, s.log); err == nil {
			for _, key := range restartOnly(old, cfg) {
				s.log.Warn("config reload: this setting changes only when tunsocks restarts", "key", key)
			}
			if s.w.pool == nil && cfg.Ruleset != nil && cfg.Ruleset.NeedsDomain() {
				s.log.Warn("config reload: rules match domains, but this run answers no DNS with fake IPs; restart to turn it on")
			}
			s.w.live.Swap(p)
			s.cfg.Store(cfg)
			s.lastReload.Store(time.Now().UnixNano())
			s.reloads.With("ok").Inc()
			s.log.Info("config reloaded: new flows follow it, open flows keep their outbounds",
				"path", path, "outbound", p.Summary(), "open_flows", len(s.rt.Flows()))
			return nil
		}
	}
	s.reloads.With("error").Inc()
	s.log.Warn("config reload refused; the running config stays", "path", path, "err", err)
	return err
}

// restartOnly lists the settings that differ between a and b and that a
// reload cannot change (the device, the netstack, DNS, the API).
func restartOnly(a, b *config.Config) []string {
	var keys []string
	for _, f := range []struct {
		key  string
		x, y any
	}{
		{"tun", a.Tun, b.Tun},
		{"tcp-idle", a.TCPIdle, b.TCPIdle}, {"udp-idle", a.UDPIdle, b.UDPIdle}, {"dns-idle", a.DNSIdle, b.DNSIdle},
		{"dial-timeout", a.DialTimeout, b.DialTimeout}, {"summary-interval", a.SummaryInterval, b.SummaryInterval},
		{"fwmark", a.Fwmark, b.Fwmark}, {"out-interface", a.OutInterface, b.OutInterface},
		{"tcp-*", a.TCP, b.TCP},
		{"dns", a.DNS, b.DNS},
		{"api", a.API, b.API},
		{"sniff", a.Sniff, b.Sniff},
		{"wireguard", a.WireGuard, b.WireGuard},
		{"route", a.Route, b.Route},
		{"limits (max-memory, tcp-max-*, udp-max-*)", a.Limits, b.Limits},
	} {
		if !reflect.DeepEqual(f.x, f.y) {
			keys = append(keys, f.key)
		}
	}
	return keys
}

// apiConfig is the API's view of the run.
func (s *runState) apiConfig(cfg *config.Config, hub *api.LogHub, level *slog.LevelVar, reg *metrics.Registry) api.Config {
	c := api.Config{
		Secret: cfg.API.Secret, Version: "tunsocks " + versionString(),
		Flows: apiFlows{s}, Proxies: apiProxies{s}, Rules: apiRules{s}, Control: apiControl{s}, Explainer: apiExplainer{s},
		Logs: hub, LogLevel: level, Metrics: reg, AllowOrigins: cfg.API.AllowOrigins, Logger: s.log.With("component", "api"),
	}
	if len(c.AllowOrigins) == 0 {
		c.AllowOrigins = nil
	}
	return c
}

// apiFlows is the router's flow table.
type apiFlows struct{ s *runState }

func (a apiFlows) Flows() []api.Flow {
	cfg := a.s.cfg.Load()
	fs := a.s.rt.Flows()
	out := make([]api.Flow, len(fs))
	for i, f := range fs {
		out[i] = apiFlow(f, cfg)
	}
	return out
}

func apiFlow(f router.FlowInfo, cfg *config.Config) api.Flow {
	a := api.Flow{
		ID: f.ID, Network: f.Network, InType: f.InType, InName: f.InName, InUser: f.InUser,
		Src: f.Src, Dst: f.Dst, Host: f.Host, FakeIP: f.FakeIP, Process: f.Process, UID: f.UID, PID: f.PID,
		RuleLine: f.Rule, Outbound: f.Outbound, Target: f.Target, Remote: f.Remote, Start: f.Start, Up: f.Up, Down: f.Down,
	}
	if m := f.Match; m != nil && m.Index >= 0 {
		a.RuleType, a.RulePayload = m.Type, m.Payload
	}
	if f.Outbound != "DIRECT" && f.Outbound != "DNS" {
		a.Upstream = f.Remote
	}
	for _, p := range cfg.Proxies {
		if p.Name == f.Outbound && len(p.Chain) > 0 {
			a.Chain = p.Chain
		}
	}
	return a
}

func (a apiFlows) Totals() (int64, int64)   { return a.s.rt.Totals() }
func (a apiFlows) CloseFlow(id string) bool { return a.s.rt.CloseFlow(id) }
func (a apiFlows) CloseAll() int            { return a.s.rt.CloseAll() }

// apiProxies are the live policy's outbounds, and REJECT.
type apiProxies struct{ s *runState }

func (a apiProxies) Proxies() []api.Proxy {
	cfg := a.s.cfg.Load()
	totals := a.s.rt.OutboundTotals()
	var out []api.Proxy
	for _, o := range a.s.w.live.Policy().Outbounds() {
		p := api.Proxy{Name: o.Name()}
		describeProxy(&p, cfg)
		t := totals[p.Name]
		p.Flows, p.Up, p.Down = t.Flows, t.Up, t.Down
		out = append(out, p)
	}
	out = append(out, api.Proxy{Name: "REJECT", Type: "Reject", Flows: uint64(a.s.rt.Stats().Rejected.Load())})
	return out
}

// describeProxy fills in a proxy's Clash type, UDP support, server and
// chain from the config.
func describeProxy(p *api.Proxy, cfg *config.Config) {
	if p.Name == "DIRECT" {
		p.Type, p.UDP = "Direct", true
		return
	}
	u := cfg.ProxyURL // the default, named by its URL
	for _, c := range cfg.Proxies {
		if c.Name == p.Name {
			if len(c.Chain) > 0 {
				p.Type, p.Chain = "Relay", c.Chain
				return
			}
			u = c.URL
		}
	}
	if u == nil {
		p.Type = "Unknown"
		return
	}
	p.Server = u.Host
	switch u.Scheme {
	case "socks5", "socks5h":
		p.Type, p.UDP = "Socks5", true
	case "socks4", "socks4a":
		p.Type = "Socks4"
	case "http":
		p.Type = "Http"
	default:
		p.Type = u.Scheme
	}
}

// Delay is a real HTTP request through the outbound: the time until the
// response's headers, as mihomo measures it (a HEAD request, redirects not
// followed, any status an answer).
func (a apiProxies) Delay(ctx context.Context, name, url string) (time.Duration, error) {
	if name == "REJECT" {
		return 0, errors.New("REJECT carries nothing")
	}
	out, ok := a.s.w.live.Policy().Outbound(name)
	if !ok {
		return 0, fmt.Errorf("outbound %q: %w", name, api.ErrNotFound)
	}
	tr := &http.Transport{
		DialContext:       out.DialContext,
		DisableKeepAlives: true,
		Proxy:             nil,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	d := time.Since(start)
	resp.Body.Close()
	return d, nil
}

// apiRules are the live policy's rules.
type apiRules struct{ s *runState }

func (a apiRules) Rules() []api.Rule {
	rs := a.s.w.live.Policy().Rules()
	out := make([]api.Rule, len(rs))
	for i, r := range rs {
		out[i] = api.Rule{Index: r.Index, Type: r.Type, Payload: r.Payload, Target: r.Action.String(),
			Line: r.Text, Source: r.Source, Size: r.Size, Hits: r.Hits, HitAt: r.LastHit}
	}
	return out
}

// apiControl is the mode, the GLOBAL selection and reloads.
type apiControl struct{ s *runState }

func (a apiControl) Settings() api.Settings {
	s := a.s
	cfg := s.cfg.Load()
	st := api.Settings{
		Mode: s.w.live.Mode().String(), Global: s.w.live.Global().Name(), ConfigPath: cfg.Path,
		TUN: api.TUNSettings{Enable: true, Device: s.tun, Stack: "gvisor"},
		DNS: api.DNSSettings{Enable: s.w.pool != nil, Nameservers: cfg.DNS.Nameservers},
	}
	if stk := s.st.Load(); stk != nil {
		st.TUN.Stack = tcpStackName(cfg, stk)
	}
	if cfg.Tun.FD >= 0 {
		st.TUN.FD = cfg.Tun.FD
	}
	for _, p := range cfg.Tun.Addrs {
		st.IPv6 = st.IPv6 || p.Addr().Is6()
	}
	if s.w.pool != nil {
		v4, v6 := s.w.pool.Prefixes()
		st.DNS.FakeIPRange = v4.String()
		if v6.IsValid() {
			st.DNS.FakeIPRange += " " + v6.String()
		}
	}
	return st
}

func (a apiControl) SetMode(mode string) error {
	m, err := policy.ParseMode(mode)
	if err != nil {
		return err
	}
	a.s.w.live.SetMode(m)
	return nil
}

func (a apiControl) SelectGlobal(name string) error { return a.s.w.live.SelectGlobal(name) }

func (a apiControl) Reload(ctx context.Context, path string) error { return a.s.reload(path) }

// apiExplainer explains open flows.
type apiExplainer struct{ s *runState }

func (a apiExplainer) Explain(id string) (any, bool) {
	f, ok := a.s.rt.Flow(id)
	if !ok {
		return nil, false
	}
	return explainFlowNow(f, a.s.cfg.Load(), a.s.w.live), true
}
