package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	rtmetrics "runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

func (s *Server) routes() {
	m := s.mux
	m.HandleFunc("GET /{$}", s.hello)
	m.HandleFunc("GET /version", s.version)
	m.HandleFunc("GET /configs", s.getConfigs)
	m.HandleFunc("PATCH /configs", s.patchConfigs)
	m.HandleFunc("PUT /configs", s.putConfigs)
	m.HandleFunc("GET /rules", s.getRules)
	m.HandleFunc("GET /providers/rules", s.emptyProviders)
	m.HandleFunc("GET /providers/proxies", s.emptyProviders)
	m.HandleFunc("GET /proxies", s.getProxies)
	m.HandleFunc("GET /proxies/{name}", s.getProxy)
	m.HandleFunc("PUT /proxies/{name}", s.putProxy)
	m.HandleFunc("GET /proxies/{name}/delay", s.proxyDelay)
	m.HandleFunc("GET /group/{name}/delay", s.groupDelay)
	m.HandleFunc("GET /connections", s.getConnections)
	m.HandleFunc("DELETE /connections", s.closeAll)
	m.HandleFunc("DELETE /connections/{id}", s.closeOne)
	m.HandleFunc("GET /connections/{id}/explain", s.explain)
	m.HandleFunc("GET /traffic", s.traffic)
	m.HandleFunc("GET /memory", s.memory)
	m.HandleFunc("GET /logs", s.logs)
	if s.cfg.Metrics != nil {
		m.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) { writeMetrics(w, s.cfg.Metrics) })
	}
	m.Handle("GET /ui/", uiHandler())
	m.Handle("GET /ui", http.RedirectHandler("/ui/", http.StatusMovedPermanently))
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { notFound(w) })
}

func (s *Server) hello(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"hello": "tunsocks"})
}

func (s *Server) version(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, struct {
		Version string `json:"version"`
		Meta    bool   `json:"meta"`
	}{s.cfg.Version, true})
}

// configsJSON is GET /configs: the Clash keys dashboards read (ports are 0:
// tunsocks has no mixed or SOCKS inbound here), and tunsocks' own under
// "tunsocks".
type configsJSON struct {
	Port        int      `json:"port"`
	SocksPort   int      `json:"socks-port"`
	RedirPort   int      `json:"redir-port"`
	TProxyPort  int      `json:"tproxy-port"`
	MixedPort   int      `json:"mixed-port"`
	AllowLAN    bool     `json:"allow-lan"`
	BindAddress string   `json:"bind-address"`
	Mode        string   `json:"mode"`
	ModeList    []string `json:"mode-list"`
	Modes       []string `json:"modes"`
	LogLevel    string   `json:"log-level"`
	IPv6        bool     `json:"ipv6"`
	TUN         struct {
		Enable              bool     `json:"enable"`
		Device              string   `json:"device"`
		Stack               string   `json:"stack"`
		DNSHijack           []string `json:"dns-hijack"`
		AutoRoute           bool     `json:"auto-route"`
		AutoDetectInterface bool     `json:"auto-detect-interface"`
		FileDescriptor      int      `json:"file-descriptor"`
	} `json:"tun"`
	DNS struct {
		Enable       bool     `json:"enable"`
		EnhancedMode string   `json:"enhanced-mode"`
		Nameserver   []string `json:"nameserver"`
		FakeIPRange  string   `json:"fake-ip-range"`
	} `json:"dns"`
	Tunsocks struct {
		Config string `json:"config"`
		Global string `json:"global"`
	} `json:"tunsocks"`
}

var modes = []string{ModeRule, ModeGlobal, ModeDirect}

func (s *Server) getConfigs(w http.ResponseWriter, r *http.Request) {
	var c configsJSON
	c.BindAddress = "*"
	c.Mode = ModeRule
	c.ModeList, c.Modes = modes, modes
	c.LogLevel = clashLevel(s.cfg.LogLevel.Level())
	c.TUN.DNSHijack = []string{}
	c.DNS.Nameserver = []string{}
	if s.cfg.Control != nil {
		st := s.cfg.Control.Settings()
		c.Mode = st.Mode
		c.IPv6 = st.IPv6
		c.TUN.Enable, c.TUN.Device, c.TUN.Stack, c.TUN.FileDescriptor = st.TUN.Enable, st.TUN.Device, st.TUN.Stack, st.TUN.FD
		c.DNS.Enable, c.DNS.FakeIPRange = st.DNS.Enable, st.DNS.FakeIPRange
		if st.DNS.Enable {
			c.DNS.EnhancedMode = "fake-ip"
			c.TUN.DNSHijack = []string{}
		}
		if st.DNS.Nameservers != nil {
			c.DNS.Nameserver = st.DNS.Nameservers
		}
		c.Tunsocks.Config, c.Tunsocks.Global = st.ConfigPath, st.Global
	}
	writeJSON(w, http.StatusOK, c)
}

// patchConfigs changes mode and log-level; other keys are refused by name
// rather than ignored, so a dashboard toggle that cannot work says so.
func (s *Server) patchConfigs(w http.ResponseWriter, r *http.Request) {
	var body map[string]json.RawMessage
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&body); err != nil {
		writeError(w, http.StatusBadRequest, "body: want a JSON object like {\"mode\":\"global\"}: %v", err)
		return
	}
	var mode string
	var level *slog.Level
	for k, v := range body {
		switch k {
		case "mode":
			if err := json.Unmarshal(v, &mode); err != nil || !slices.Contains(modes, strings.ToLower(mode)) {
				writeError(w, http.StatusBadRequest, "mode %s: want rule, global or direct", v)
				return
			}
			mode = strings.ToLower(mode)
		case "log-level":
			var name string
			l, ok := slog.Level(0), false
			if json.Unmarshal(v, &name) == nil {
				l, ok = parseClashLevel(name)
			}
			if !ok {
				writeError(w, http.StatusBadRequest, "log-level %s: want debug, info, warning, error or silent", v)
				return
			}
			level = &l
		default:
			writeError(w, http.StatusBadRequest, "%q cannot be changed at run time; PATCH /configs takes mode and log-level", k)
			return
		}
	}
	if mode != "" {
		if s.cfg.Control == nil {
			writeError(w, http.StatusBadRequest, "modes are not available")
			return
		}
		if err := s.cfg.Control.SetMode(mode); err != nil {
			writeError(w, http.StatusBadRequest, "mode %s: %v", mode, err)
			return
		}
		s.log.Info("mode changed through the API", "mode", mode)
	}
	if level != nil {
		s.cfg.LogLevel.Set(*level)
		s.log.Info("log level changed through the API", "level", clashLevel(*level))
	}
	w.WriteHeader(http.StatusNoContent)
}

// putConfigs re-reads the config: {"path":""} (or no body) re-reads the
// file in use.
func (s *Server) putConfigs(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Path    string `json:"path"`
		Payload string `json:"payload"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&body); err != nil && !errors.Is(err, io.EOF) {
		writeError(w, http.StatusBadRequest, "body: want {\"path\":\"\"} (empty: the file in use): %v", err)
		return
	}
	if body.Payload != "" {
		writeError(w, http.StatusBadRequest, "a config payload is not supported: give a path, or none to re-read the file in use")
		return
	}
	if s.cfg.Control == nil {
		writeError(w, http.StatusBadRequest, "reloading is not available")
		return
	}
	if err := s.cfg.Control.Reload(r.Context(), body.Path); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) getRules(w http.ResponseWriter, r *http.Request) {
	out := struct {
		Rules []ruleJSON `json:"rules"`
	}{Rules: []ruleJSON{}}
	if s.cfg.Rules != nil {
		for _, ru := range s.cfg.Rules.Rules() {
			out.Rules = append(out.Rules, rule(ru))
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// emptyProviders: tunsocks has no providers, but metacubexd's Rules and
// Proxies pages fail unless the endpoints answer.
func (s *Server) emptyProviders(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]map[string]any{"providers": {}})
}

// proxies returns every outbound and the GLOBAL selector, by name.
func (s *Server) proxies() map[string]proxyJSON {
	out := map[string]proxyJSON{}
	if s.cfg.Proxies == nil {
		return out
	}
	var all []string
	for _, p := range s.cfg.Proxies.Proxies() {
		out[p.Name] = s.proxy(p)
		all = append(all, p.Name)
	}
	g := Proxy{Name: "GLOBAL", Type: "Selector", UDP: true, All: all}
	if s.cfg.Control != nil {
		g.Now = s.cfg.Control.Settings().Global
	}
	out["GLOBAL"] = s.proxy(g)
	return out
}

func (s *Server) proxy(p Proxy) proxyJSON {
	j := proxyJSON{Name: p.Name, Type: p.Type, UDP: p.UDP, Alive: true, All: p.All, Now: p.Now,
		Server: p.Server, Chain: p.Chain, Flows: p.Flows, Up: p.Up, Down: p.Down, History: []delayEntry{}}
	s.histMu.Lock()
	j.History = append(j.History, s.history[p.Name]...)
	s.histMu.Unlock()
	if n := len(j.History); n > 0 && j.History[n-1].Delay == 0 {
		j.Alive = false
	}
	return j
}

func (s *Server) getProxies(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"proxies": s.proxies()})
}

func (s *Server) getProxy(w http.ResponseWriter, r *http.Request) {
	p, ok := s.proxies()[r.PathValue("name")]
	if !ok {
		notFound(w)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

// putProxy selects GLOBAL's outbound, the only selector tunsocks has.
func (s *Server) putProxy(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	all := s.proxies()
	p, ok := all[name]
	if !ok {
		notFound(w)
		return
	}
	if p.Type != "Selector" || s.cfg.Control == nil {
		writeError(w, http.StatusBadRequest, "Must be a Selector")
		return
	}
	var body struct {
		Name string `json:"name"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&body); err != nil || body.Name == "" {
		writeError(w, http.StatusBadRequest, "body: want {\"name\":\"OUTBOUND\"}")
		return
	}
	if !slices.Contains(p.All, body.Name) {
		writeError(w, http.StatusBadRequest, "Selector update error: %q is not one of %s", body.Name, strings.Join(p.All, ", "))
		return
	}
	if err := s.cfg.Control.SelectGlobal(body.Name); err != nil {
		writeError(w, http.StatusBadRequest, "Selector update error: %v", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// delayParams reads ?url= and ?timeout= (ms).
func (s *Server) delayParams(w http.ResponseWriter, r *http.Request) (target string, timeout time.Duration, ok bool) {
	q := r.URL.Query()
	target = q.Get("url")
	u, err := url.Parse(target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		writeError(w, http.StatusBadRequest, "url %q: want an http:// or https:// URL, like http://www.gstatic.com/generate_204", target)
		return "", 0, false
	}
	timeout = s.cfg.DelayTimeout
	if t := q.Get("timeout"); t != "" {
		ms, err := strconv.Atoi(t)
		if err != nil || ms <= 0 || ms > 60000 {
			writeError(w, http.StatusBadRequest, "timeout %q: want milliseconds, 1 to 60000", t)
			return "", 0, false
		}
		timeout = time.Duration(ms) * time.Millisecond
	}
	return target, timeout, true
}

// testDelay runs one delay test and records it in the proxy's history.
func (s *Server) testDelay(ctx context.Context, name, target string, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	d, err := s.cfg.Proxies.Delay(ctx, name, target)
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	if errors.Is(err, ErrNotFound) {
		return 0, err
	}
	e := delayEntry{Time: s.cfg.Now().UTC()}
	if err == nil {
		e.Delay = max(1, int(d.Milliseconds()))
	}
	s.histMu.Lock()
	h := append(s.history[name], e)
	if len(h) > 10 {
		h = h[len(h)-10:]
	}
	s.history[name] = h
	s.histMu.Unlock()
	if err != nil && ctx.Err() != nil {
		return 0, context.DeadlineExceeded
	}
	return d, err
}

// proxyDelay is a real request through the outbound: 200 {"delay":ms},
// 504 {"message":"Timeout"}, 503 for any other failure, 404 for an unknown
// name, as mihomo answers.
func (s *Server) proxyDelay(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if s.cfg.Proxies == nil {
		notFound(w)
		return
	}
	if _, ok := s.proxies()[name]; !ok || name == "GLOBAL" {
		notFound(w)
		return
	}
	target, timeout, ok := s.delayParams(w, r)
	if !ok {
		return
	}
	d, err := s.testDelay(r.Context(), name, target, timeout)
	switch {
	case errors.Is(err, ErrNotFound):
		notFound(w)
	case errors.Is(err, context.DeadlineExceeded):
		writeJSON(w, http.StatusGatewayTimeout, message{"Timeout"})
	case err != nil:
		s.log.Debug("delay test failed", "outbound", name, "url", target, "err", err)
		writeJSON(w, http.StatusServiceUnavailable, message{"An error occurred in the delay test"})
	default:
		writeJSON(w, http.StatusOK, map[string]int{"delay": max(1, int(d.Milliseconds()))})
	}
}

// groupDelay tests every member of GLOBAL at once: {"name":ms} for those
// that answered.
func (s *Server) groupDelay(w http.ResponseWriter, r *http.Request) {
	g, ok := s.proxies()[r.PathValue("name")]
	if !ok || g.Type != "Selector" {
		notFound(w)
		return
	}
	target, timeout, ok := s.delayParams(w, r)
	if !ok {
		return
	}
	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		out = map[string]int{}
		sem = make(chan struct{}, 8)
	)
	for _, name := range g.All {
		if name == "REJECT" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if d, err := s.testDelay(r.Context(), name, target, timeout); err == nil {
				mu.Lock()
				out[name] = max(1, int(d.Milliseconds()))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(out) == 0 {
		writeJSON(w, http.StatusGatewayTimeout, message{"get delay: all proxies timeout"})
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) snapshot() connectionsJSON {
	flows := s.cfg.Flows.Flows()
	sortFlows(flows)
	up, down := s.cfg.Flows.Totals()
	c := connectionsJSON{UploadTotal: up, DownloadTotal: down, Connections: make([]connectionJSON, 0, len(flows)), Memory: memoryInUse()}
	for _, f := range flows {
		c.Connections = append(c.Connections, connection(f))
	}
	return c
}

// getConnections is one snapshot, or with an upgrade (or ?stream) a
// snapshot every ?interval= ms (default 1000).
func (s *Server) getConnections(w http.ResponseWriter, r *http.Request) {
	interval := time.Second
	if v := r.URL.Query().Get("interval"); v != "" {
		ms, err := strconv.Atoi(v)
		if err != nil || ms < 100 || ms > 60000 {
			writeError(w, http.StatusBadRequest, "interval %q: want milliseconds, 100 to 60000", v)
			return
		}
		interval = time.Duration(ms) * time.Millisecond
	}
	if !isUpgrade(r) && !r.URL.Query().Has("stream") {
		writeJSON(w, http.StatusOK, s.snapshot())
		return
	}
	st, err := s.openStream(w, r)
	if err != nil {
		return
	}
	defer st.close()
	st.tick(interval, true, func() (any, bool) { return s.snapshot(), true })
}

func (s *Server) closeAll(w http.ResponseWriter, r *http.Request) {
	n := s.cfg.Flows.CloseAll()
	s.log.Info("flows closed through the API", "count", n)
	w.WriteHeader(http.StatusNoContent)
}

// closeOne answers 204 whether or not the flow was still open (it may
// have ended on its own a moment ago), as mihomo does.
func (s *Server) closeOne(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if s.cfg.Flows.CloseFlow(id) {
		s.log.Info("flow closed through the API", "id", id)
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) explain(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Explainer == nil {
		notFound(w)
		return
	}
	v, ok := s.cfg.Explainer.Explain(r.PathValue("id"))
	if !ok {
		notFound(w)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// traffic streams {"up","down"} in bytes per second, and the totals.
func (s *Server) traffic(w http.ResponseWriter, r *http.Request) {
	st, err := s.openStream(w, r)
	if err != nil {
		return
	}
	defer st.close()
	lastUp, lastDown := s.cfg.Flows.Totals()
	last := time.Now()
	st.tick(time.Second, false, func() (any, bool) {
		up, down := s.cfg.Flows.Totals()
		now := time.Now()
		secs := now.Sub(last).Seconds()
		if secs <= 0 {
			secs = 1
		}
		v := struct {
			Up        int64 `json:"up"`
			Down      int64 `json:"down"`
			UpTotal   int64 `json:"upTotal"`
			DownTotal int64 `json:"downTotal"`
		}{int64(float64(up-lastUp) / secs), int64(float64(down-lastDown) / secs), up, down}
		lastUp, lastDown, last = up, down, now
		return v, true
	})
}

// memory streams {"inuse","oslimit"}; the first sample is 0, as mihomo's
// is, so the dashboards' charts start at zero.
func (s *Server) memory(w http.ResponseWriter, r *http.Request) {
	st, err := s.openStream(w, r)
	if err != nil {
		return
	}
	defer st.close()
	first := true
	st.tick(time.Second, true, func() (any, bool) {
		v := struct {
			InUse   uint64 `json:"inuse"`
			OSLimit uint64 `json:"oslimit"`
		}{}
		if !first {
			v.InUse = memoryInUse()
		}
		first = false
		return v, true
	})
}

// memoryInUse is the memory the Go runtime holds from the OS and has not
// returned.
func memoryInUse() uint64 {
	samples := []rtmetrics.Sample{
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
	}
	rtmetrics.Read(samples)
	if samples[0].Value.Kind() != rtmetrics.KindUint64 || samples[1].Value.Kind() != rtmetrics.KindUint64 {
		return 0
	}
	return samples[0].Value.Uint64() - samples[1].Value.Uint64()
}

// logs streams records at ?level= and above: {"type","payload"}, or with
// ?format=structured {"time","level","message","fields"}.
func (s *Server) logs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	level, ok := parseClashLevel(q.Get("level"))
	if !ok {
		writeError(w, http.StatusBadRequest, "level %q: want debug, info, warning, error or silent", q.Get("level"))
		return
	}
	if s.cfg.Logs == nil {
		writeError(w, http.StatusNotFound, "no log hub")
		return
	}
	structured := q.Get("format") == "structured"
	st, err := s.openStream(w, r)
	if err != nil {
		return
	}
	defer st.close()
	ch, cancel := s.cfg.Logs.Subscribe(level, 256)
	defer cancel()
	for {
		select {
		case <-st.ctx.Done():
			return
		case rec := <-ch:
			var v any
			if structured {
				fields := make([]logField, 0, len(rec.Attrs))
				for _, a := range rec.Attrs {
					fields = append(fields, logField{a[0], a[1]})
				}
				v = logStructured{Time: rec.Time.Format(time.RFC3339Nano), Level: clashLevel(rec.Level), Message: rec.Message, Fields: fields}
			} else {
				v = logLine{Type: clashLevel(rec.Level), Payload: rec.Payload()}
			}
			if err := st.send(v); err != nil {
				return
			}
		}
	}
}

type logLine struct {
	Type    string `json:"type"`
	Payload string `json:"payload"`
}

type logField struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

type logStructured struct {
	Time    string     `json:"time"`
	Level   string     `json:"level"`
	Message string     `json:"message"`
	Fields  []logField `json:"fields"`
}
