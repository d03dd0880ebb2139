package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/metrics"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

type fixture struct {
	srv     *Server
	flows   *fakeFlows
	control *fakeControl
	hub     *LogHub
	level   *slog.LevelVar
	logBuf  *testenv.Buffer
	reg     *metrics.Registry
}

func newFixture(t *testing.T, secret string) *fixture {
	t.Helper()
	f := &fixture{flows: newFakeFlows(), control: &fakeControl{mode: ModeRule, global: "corp"},
		level: new(slog.LevelVar), logBuf: &testenv.Buffer{}, reg: metrics.NewRegistry()}
	f.hub = NewLogHub(slog.NewTextHandler(f.logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}), f.level)
	c := f.reg.Counter("tunsocks_connections_total", "Flows opened.", "network")
	c.With("tcp").Add(2)
	var err error
	f.srv, err = New(Config{
		Secret: secret, Version: "tunsocks v1.2.3",
		Flows: f.flows, Proxies: newFakeProxies(), Rules: testRules, Control: f.control,
		Explainer: fakeExplainer{f.flows}, Logs: f.hub, LogLevel: f.level, Metrics: f.reg,
		Logger: slog.New(f.hub), Now: func() time.Time { return t0 },
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) do(t *testing.T, method, target, body string, hdr ...string) *httptest.ResponseRecorder {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, target, rd)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	f.srv.ServeHTTP(w, req)
	return w
}

// canonical re-indents a JSON body, with the values that change from run
// to run (memory use) zeroed.
func canonical(t *testing.T, body []byte) []byte {
	t.Helper()
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, body)
	}
	if m, ok := v.(map[string]any); ok {
		if _, ok := m["memory"]; ok {
			m["memory"] = 0
		}
	}
	out, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(out, '\n')
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".json")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./api -run TestGolden -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from %s:\n--- got\n%s\n--- want\n%s", name, path, got, want)
	}
}

// TestGolden checks the body of every endpoint that answers one JSON
// document against testdata/.
func TestGolden(t *testing.T) {
	f := newFixture(t, "s3cret")
	auth := []string{"Authorization", "Bearer s3cret"}
	// A delay test each way first, so /proxies shows history.
	for _, name := range []string{"corp", "web"} {
		f.do(t, "GET", "/proxies/"+name+"/delay?url=http%3A%2F%2Fexample.com%2F&timeout=500", "", auth...)
	}
	for _, tc := range []struct {
		name, method, target, body string
		status                     int
		noAuth                     bool
	}{
		{name: "hello", method: "GET", target: "/", status: 200},
		{name: "version", method: "GET", target: "/version", status: 200},
		{name: "configs", method: "GET", target: "/configs", status: 200},
		{name: "rules", method: "GET", target: "/rules", status: 200},
		{name: "providers-rules", method: "GET", target: "/providers/rules", status: 200},
		{name: "providers-proxies", method: "GET", target: "/providers/proxies", status: 200},
		{name: "proxies", method: "GET", target: "/proxies", status: 200},
		{name: "proxy-corp", method: "GET", target: "/proxies/corp", status: 200},
		{name: "proxy-global", method: "GET", target: "/proxies/GLOBAL", status: 200},
		{name: "proxy-unknown", method: "GET", target: "/proxies/nope", status: 404},
		{name: "delay-ok", method: "GET", target: "/proxies/DIRECT/delay?url=http://example.com/&timeout=500", status: 200},
		{name: "delay-error", method: "GET", target: "/proxies/web/delay?url=http://example.com/&timeout=500", status: 503},
		{name: "delay-timeout", method: "GET", target: "/proxies/chain/delay?url=http://example.com/&timeout=50", status: 504},
		{name: "delay-bad-url", method: "GET", target: "/proxies/corp/delay?url=ftp://x/", status: 400},
		{name: "delay-unknown", method: "GET", target: "/proxies/nope/delay?url=http://example.com/", status: 404},
		{name: "group-delay", method: "GET", target: "/group/GLOBAL/delay?url=http://example.com/&timeout=50", status: 200},
		{name: "connections", method: "GET", target: "/connections", status: 200},
		{name: "explain", method: "GET", target: "/connections/5f0c6a9e-3b1d-4c2a-9e7f-0a1b2c3d4e5f/explain", status: 200},
		{name: "explain-unknown", method: "GET", target: "/connections/nope/explain", status: 404},
		{name: "unauthorized", method: "GET", target: "/version", status: 401, noAuth: true},
		{name: "not-found", method: "GET", target: "/nope", status: 404},
		{name: "patch-bad-mode", method: "PATCH", target: "/configs", body: `{"mode":"fast"}`, status: 400},
		{name: "patch-unsupported", method: "PATCH", target: "/configs", body: `{"allow-lan":true}`, status: 400},
		{name: "put-payload", method: "PUT", target: "/configs", body: `{"payload":"rules: []"}`, status: 400},
		{name: "put-proxy-not-selector", method: "PUT", target: "/proxies/corp", body: `{"name":"DIRECT"}`, status: 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hdr []string
			if !tc.noAuth {
				hdr = auth
			}
			w := f.do(t, tc.method, tc.target, tc.body, hdr...)
			if w.Code != tc.status {
				t.Errorf("%s %s: status %d, want %d: %s", tc.method, tc.target, w.Code, tc.status, w.Body)
			}
			if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type %q", ct)
			}
			golden(t, tc.name, canonical(t, w.Body.Bytes()))
		})
	}
}

// TestConnectionSchema checks every connection object against the fields
// and JSON types metacubexd's ConnectionRawMessage (packages/ui/types/
// index.ts) declares, kept in testdata/metacubexd-connection.schema.json.
func TestConnectionSchema(t *testing.T) {
	raw, err := os.ReadFile("testdata/metacubexd-connection.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var schema map[string]any
	if err := json.Unmarshal(raw, &schema); err != nil {
		t.Fatal(err)
	}
	delete(schema, "$comment")
	f := newFixture(t, "")
	w := f.do(t, "GET", "/connections", "")
	var snap struct {
		Connections []map[string]any `json:"connections"`
		Upload      *float64         `json:"uploadTotal"`
		Download    *float64         `json:"downloadTotal"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &snap); err != nil {
		t.Fatal(err)
	}
	if snap.Upload == nil || snap.Download == nil {
		t.Error("uploadTotal or downloadTotal missing (metacubexd's WsMsg needs both)")
	}
	if len(snap.Connections) != len(f.flows.Flows()) {
		t.Fatalf("%d connections, want %d", len(snap.Connections), len(f.flows.Flows()))
	}
	for _, c := range snap.Connections {
		for _, p := range matchSchema("", schema, c) {
			t.Errorf("connection %v: %s", c["id"], p)
		}
		m := c["metadata"].(map[string]any)
		for _, k := range []string{"sourcePort", "destinationPort", "inboundPort"} {
			if _, err := strconv.ParseUint(m[k].(string), 10, 16); err != nil {
				t.Errorf("metadata.%s = %q: want a port number as a string", k, m[k])
			}
		}
		if _, err := time.Parse(time.RFC3339Nano, c["start"].(string)); err != nil {
			t.Errorf("start %q is not RFC 3339", c["start"])
		}
	}
	// A broken object must fail the check: the check itself can fail.
	bad := map[string]any{"id": "x", "metadata": map[string]any{"sourcePort": 443.0}}
	if len(matchSchema("", schema, bad)) == 0 {
		t.Error("matchSchema accepted a connection with missing fields and a numeric port")
	}
}

// matchSchema compares v with a schema of {"field": "string"|"number"|
// "boolean"|"array"|{nested}} and lists what is missing or mistyped.
func matchSchema(prefix string, schema map[string]any, v map[string]any) []string {
	var problems []string
	for k, want := range schema {
		got, ok := v[k]
		if !ok {
			problems = append(problems, prefix+k+" is missing")
			continue
		}
		switch want := want.(type) {
		case map[string]any:
			sub, ok := got.(map[string]any)
			if !ok {
				problems = append(problems, prefix+k+" is not an object")
				continue
			}
			problems = append(problems, matchSchema(prefix+k+".", want, sub)...)
		case string:
			var kind string
			switch got.(type) {
			case string:
				kind = "string"
			case float64:
				kind = "number"
			case bool:
				kind = "boolean"
			case []any:
				kind = "array"
			default:
				kind = "null or object"
			}
			if kind != want {
				problems = append(problems, prefix+k+" is a "+kind+", want a "+want)
			}
		}
	}
	slices.Sort(problems)
	return problems
}

func TestAuth(t *testing.T) {
	f := newFixture(t, "s3cret")
	for _, tc := range []struct {
		name, auth string
		status     int
	}{
		{"none", "", 401},
		{"wrong", "Bearer nope", 401},
		{"prefix of the secret", "Bearer s3c", 401},
		{"not bearer", "Basic s3cret", 401},
		{"right", "Bearer s3cret", 200},
		{"lower-case scheme", "bearer s3cret", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hdr []string
			if tc.auth != "" {
				hdr = []string{"Authorization", tc.auth}
			}
			w := f.do(t, "GET", "/connections", "", hdr...)
			if w.Code != tc.status {
				t.Fatalf("status %d, want %d", w.Code, tc.status)
			}
			if tc.status == 401 && strings.TrimSpace(w.Body.String()) != `{"message":"Unauthorized"}` {
				t.Errorf("body %q", w.Body)
			}
		})
	}
	// ?token= is for WebSocket upgrades only.
	if w := f.do(t, "GET", "/connections?token=s3cret", ""); w.Code != 401 {
		t.Errorf("?token= on a plain request: status %d, want 401", w.Code)
	}
	// The page's files need no secret: the page asks for it.
	if w := f.do(t, "GET", "/ui/", ""); w.Code != 200 || !strings.Contains(w.Body.String(), "app.js") {
		t.Errorf("/ui/: %d %.80s", w.Code, w.Body)
	}
}

// TestPreflight: a dashboard on a public origin calling the API on a
// private address makes Chrome send a Private Network Access preflight,
// without credentials; it must be allowed.
func TestPreflight(t *testing.T) {
	f := newFixture(t, "s3cret")
	w := f.do(t, "OPTIONS", "/connections", "",
		"Origin", "https://metacubex.github.io",
		"Access-Control-Request-Method", "DELETE",
		"Access-Control-Request-Headers", "authorization",
		"Access-Control-Request-Private-Network", "true")
	if w.Code != http.StatusNoContent {
		t.Fatalf("status %d, want 204: %s", w.Code, w.Body)
	}
	h := w.Header()
	for k, want := range map[string]string{
		"Access-Control-Allow-Private-Network": "true",
		"Access-Control-Allow-Origin":          "*",
		"Access-Control-Max-Age":               "300",
	} {
		if got := h.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if m := h.Get("Access-Control-Allow-Methods"); !strings.Contains(m, "DELETE") || !strings.Contains(m, "PATCH") {
		t.Errorf("Allow-Methods %q", m)
	}
	if !strings.Contains(strings.ToLower(h.Get("Access-Control-Allow-Headers")), "authorization") {
		t.Errorf("Allow-Headers %q", h.Get("Access-Control-Allow-Headers"))
	}
	// Without the PNA request header there is no PNA answer.
	w = f.do(t, "OPTIONS", "/connections", "", "Origin", "https://x.example", "Access-Control-Request-Method", "GET")
	if w.Header().Get("Access-Control-Allow-Private-Network") != "" {
		t.Error("PNA header sent without being asked")
	}
	// A real cross-origin request gets the CORS header with its answer.
	w = f.do(t, "GET", "/version", "", "Origin", "https://x.example", "Authorization", "Bearer s3cret")
	if w.Code != 200 || w.Header().Get("Access-Control-Allow-Origin") != "*" {
		t.Errorf("GET with Origin: %d, Allow-Origin %q", w.Code, w.Header().Get("Access-Control-Allow-Origin"))
	}
}

func TestAllowOrigins(t *testing.T) {
	srv, err := New(Config{Flows: newFakeFlows(), AllowOrigins: []string{"https://ok.example"}})
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest("OPTIONS", "/version", nil)
	req.Header.Set("Origin", "https://evil.example")
	req.Header.Set("Access-Control-Request-Method", "GET")
	w := httptest.NewRecorder()
	srv.ServeHTTP(w, req)
	if w.Code != http.StatusForbidden || w.Header().Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("preflight from a foreign origin: %d, Allow-Origin %q", w.Code, w.Header().Get("Access-Control-Allow-Origin"))
	}
	req.Header.Set("Origin", "https://ok.example")
	w = httptest.NewRecorder()
	srv.ServeHTTP(w, req)
	if w.Code != http.StatusNoContent || w.Header().Get("Access-Control-Allow-Origin") != "https://ok.example" {
		t.Errorf("preflight from an allowed origin: %d, Allow-Origin %q", w.Code, w.Header().Get("Access-Control-Allow-Origin"))
	}
}

// serve runs the fixture's server on a loopback listener until the test
// ends, and returns its base URL.
func (f *fixture) serve(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := testenv.Recv(t, done, "the server's end"); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

// TestWebSocketToken: yacd put ?token= unescaped, so a secret with & broke
// (haishanh/yacd#507); the token is URL-decoded, and only the right one
// opens the socket.
func TestWebSocketToken(t *testing.T) {
	f := newFixture(t, "a&b")
	base := "ws" + strings.TrimPrefix(f.serve(t), "http")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c, _, err := websocket.Dial(ctx, base+"/connections?token=a%26b&interval=100", nil)
	if err != nil {
		t.Fatalf("dial with ?token=a%%26b: %v", err)
	}
	_, msg, err := c.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var snap connectionsJSON
	if err := json.Unmarshal(msg, &snap); err != nil || len(snap.Connections) != 3 {
		t.Errorf("first message: %v, %d connections: %.200s", err, len(snap.Connections), msg)
	}
	c.Close(websocket.StatusNormalClosure, "")

	// The same secret in a header works too.
	c, _, err = websocket.Dial(ctx, base+"/traffic", &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer a&b"}}})
	if err != nil {
		t.Fatalf("dial with the Bearer header: %v", err)
	}
	c.Close(websocket.StatusNormalClosure, "")

	for _, q := range []string{"?token=a&b", "?token=a%26c", ""} {
		_, resp, err := websocket.Dial(ctx, base+"/traffic"+q, nil)
		if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			code := 0
			if resp != nil {
				code = resp.StatusCode
			}
			t.Errorf("dial /traffic%s: err %v, status %d; want 401", q, err, code)
		}
	}
}

// TestStreams reads the newline-delimited JSON form of every stream.
func TestStreams(t *testing.T) {
	f := newFixture(t, "")
	base := f.serve(t)
	read := func(path string, n int, during func()) [][]byte {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", base+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: status %d", path, resp.StatusCode)
		}
		sc := bufio.NewScanner(resp.Body)
		var lines [][]byte
		for len(lines) < n && sc.Scan() {
			lines = append(lines, append([]byte(nil), sc.Bytes()...))
			if during != nil {
				during()
			}
		}
		if len(lines) < n {
			t.Fatalf("%s: %d lines, want %d: %v", path, len(lines), n, sc.Err())
		}
		return lines
	}

	// /traffic: the second sample sees what moved after the first.
	lines := read("/traffic", 2, func() { f.flows.add(1000, 5000) })
	var tr struct{ Up, Down, UpTotal, DownTotal int64 }
	if err := json.Unmarshal(lines[1], &tr); err != nil {
		t.Fatal(err)
	}
	if tr.Up <= 0 || tr.Down <= tr.Up || tr.UpTotal != 123456+1000 {
		t.Errorf("traffic sample %s: want positive rates after bytes moved", lines[1])
	}

	// /memory: the first sample is 0 (dashboards' charts start there), the
	// next one is real.
	lines = read("/memory", 2, nil)
	var m0, m1 struct{ Inuse, Oslimit uint64 }
	json.Unmarshal(lines[0], &m0)
	json.Unmarshal(lines[1], &m1)
	if m0.Inuse != 0 || m1.Inuse == 0 {
		t.Errorf("memory samples %s %s: want 0, then the memory in use", lines[0], lines[1])
	}

	// /connections?stream: a snapshot per interval.
	lines = read("/connections?stream&interval=100", 2, nil)
	for _, l := range lines {
		var s connectionsJSON
		if err := json.Unmarshal(l, &s); err != nil || len(s.Connections) != 3 {
			t.Errorf("snapshot %.100s: %v", l, err)
		}
	}

	// /logs: records at the asked level and above, as they happen.
	got := make(chan [][]byte, 1)
	go func() { got <- read("/logs?level=warning", 2, nil) }()
	deadline := time.Now().Add(10 * time.Second)
	log := slog.New(f.hub)
	for len(got) == 0 && time.Now().Before(deadline) {
		log.Info("not wanted")
		log.Warn("wanted", "dst", "example.com:443", "note", "two words")
		time.Sleep(20 * time.Millisecond)
	}
	lines = testenv.Recv(t, got, "the streamed lines")
	for _, l := range lines {
		var r logLine
		if err := json.Unmarshal(l, &r); err != nil {
			t.Fatal(err)
		}
		if r.Type != "warning" || r.Payload != `wanted dst=example.com:443 note="two words"` {
			t.Errorf("log line %s", l)
		}
	}
}

func TestLogHub(t *testing.T) {
	var buf testenv.Buffer
	level := new(slog.LevelVar)
	level.Set(slog.LevelInfo)
	hub := NewLogHub(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}), level)
	log := slog.New(hub).With("component", "dns").WithGroup("q")

	if log.Enabled(context.Background(), slog.LevelDebug) {
		t.Error("debug enabled with no subscriber at debug")
	}
	ch, cancel := hub.Subscribe(slog.LevelDebug, 4)
	if !log.Enabled(context.Background(), slog.LevelDebug) {
		t.Error("debug not enabled for a debug subscriber")
	}
	log.Debug("lookup", "name", "example.com")
	rec := testenv.Recv(t, ch, "a log record")
	if p := rec.Payload(); p != "lookup component=dns q.name=example.com" {
		t.Errorf("payload %q", p)
	}
	if strings.Contains(buf.String(), "lookup") {
		t.Error("a debug record reached the info-level log")
	}
	log.Info("answered")
	testenv.Recv(t, ch, "a log record")
	if !strings.Contains(buf.String(), "answered") {
		t.Errorf("an info record did not reach the log: %q", buf.String())
	}
	// A slow subscriber loses records; the logger does not block.
	for range 10 {
		log.Info("flood")
	}
	if hub.Dropped() == 0 {
		t.Error("no drops counted for a full subscriber")
	}
	cancel()
	if log.Enabled(context.Background(), slog.LevelDebug) {
		t.Error("debug still enabled after the subscriber left")
	}
	// A new subscriber gets the recent records the log wrote first, at
	// its level: the info ones, not the debug one only a subscriber saw.
	ch2, cancel2 := hub.Subscribe(slog.LevelDebug, 64)
	first := testenv.Recv(t, ch2, "a log record")
	cancel2()
	if first.Message != "answered" {
		t.Errorf("first recent record %q, want the earliest one the log wrote (answered)", first.Message)
	}
	// The level is live.
	level.Set(slog.LevelDebug)
	log.Debug("now visible")
	if !strings.Contains(buf.String(), "now visible") {
		t.Error("a debug record was dropped after the level went to debug")
	}
}

func TestPatchAndPutConfigs(t *testing.T) {
	f := newFixture(t, "")
	if w := f.do(t, "PATCH", "/configs", `{"mode":"Global","log-level":"debug"}`); w.Code != 204 {
		t.Fatalf("PATCH: %d %s", w.Code, w.Body)
	}
	if f.control.Settings().Mode != "global" {
		t.Errorf("mode %q, want global", f.control.Settings().Mode)
	}
	if f.level.Level() != slog.LevelDebug {
		t.Errorf("level %v, want debug", f.level.Level())
	}
	var c configsJSON
	json.Unmarshal(f.do(t, "GET", "/configs", "").Body.Bytes(), &c)
	if c.Mode != "global" || c.LogLevel != "debug" {
		t.Errorf("GET /configs after PATCH: mode %q log-level %q", c.Mode, c.LogLevel)
	}
	if w := f.do(t, "PATCH", "/configs", `{"log-level":"loud"}`); w.Code != 400 {
		t.Errorf("bad log-level: %d", w.Code)
	}

	if w := f.do(t, "PUT", "/configs?force=true", `{"path":"","payload":""}`); w.Code != 204 {
		t.Fatalf("PUT: %d %s", w.Code, w.Body)
	}
	f.control.reloadFn = func(string) error {
		return errors.New(`tunsocks.yaml:7: rule "DOMAIN-SUFIX,x,corp": unknown rule type DOMAIN-SUFIX (did you mean DOMAIN-SUFFIX?)`)
	}
	w := f.do(t, "PUT", "/configs", `{"path":"/etc/other.yaml"}`)
	if w.Code != 400 || !strings.Contains(w.Body.String(), "tunsocks.yaml:7") {
		t.Errorf("PUT of a bad config: %d %s; want 400 naming file:line", w.Code, w.Body)
	}
	if got := f.control.reloads; !slices.Equal(got, []string{"", "/etc/other.yaml"}) {
		t.Errorf("reloads %q", got)
	}

	if w := f.do(t, "PUT", "/proxies/GLOBAL", `{"name":"web"}`); w.Code != 204 || f.control.Settings().Global != "web" {
		t.Errorf("select GLOBAL: %d, global %q", w.Code, f.control.Settings().Global)
	}
	if w := f.do(t, "PUT", "/proxies/GLOBAL", `{"name":"nope"}`); w.Code != 400 {
		t.Errorf("select an unknown outbound: %d", w.Code)
	}
}

func TestCloseConnections(t *testing.T) {
	f := newFixture(t, "")
	id := "0b8e2d4c-6f1a-4e3b-8c5d-7e9f0a1b2c3d"
	if w := f.do(t, "DELETE", "/connections/"+id, ""); w.Code != 204 {
		t.Fatalf("DELETE one: %d", w.Code)
	}
	if got := f.flows.closedIDs(); !slices.Equal(got, []string{id}) {
		t.Errorf("closed %q", got)
	}
	if w := f.do(t, "DELETE", "/connections/"+id, ""); w.Code != 204 {
		t.Errorf("DELETE of a flow already gone: %d, want 204 (as mihomo)", w.Code)
	}
	if w := f.do(t, "DELETE", "/connections", ""); w.Code != 204 {
		t.Fatalf("DELETE all: %d", w.Code)
	}
	if n := len(f.flows.closedIDs()); n != 3 {
		t.Errorf("%d flows closed, want 3", n)
	}
	var snap connectionsJSON
	json.Unmarshal(f.do(t, "GET", "/connections", "").Body.Bytes(), &snap)
	if len(snap.Connections) != 0 || snap.Connections == nil {
		t.Errorf("after DELETE all: %d connections (want an empty list, not null)", len(snap.Connections))
	}
}

func TestMetricsEndpoint(t *testing.T) {
	f := newFixture(t, "s3cret")
	if w := f.do(t, "GET", "/metrics", ""); w.Code != 401 {
		t.Errorf("/metrics without the secret: %d", w.Code)
	}
	w := f.do(t, "GET", "/metrics", "", "Authorization", "Bearer s3cret")
	if w.Code != 200 || w.Header().Get("Content-Type") != metrics.ContentType {
		t.Fatalf("/metrics: %d %q", w.Code, w.Header().Get("Content-Type"))
	}
	if !strings.Contains(w.Body.String(), `tunsocks_connections_total{network="tcp"} 2`) {
		t.Errorf("/metrics:\n%s", w.Body)
	}
	if err := metrics.Check(w.Body); err != nil {
		t.Error(err)
	}
	// The separate listener's handler serves the same text without auth.
	rec := httptest.NewRecorder()
	MetricsHandler(f.reg).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), "tunsocks_connections_total") {
		t.Errorf("MetricsHandler: %d", rec.Code)
	}
}

// TestServeStops: streams in progress end when the server's context does,
// and nothing is left running.
func TestServeStops(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	f := newFixture(t, "")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.srv.Serve(ctx, ln) }()
	base := "ws://" + ln.Addr().String()
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	ws, _, err := websocket.Dial(dctx, base+"/logs?level=debug", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + ln.Addr().String() + "/traffic")
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	ws.CloseNow()
	http.DefaultClient.CloseIdleConnections()
}

func TestUIFiles(t *testing.T) {
	f := newFixture(t, "")
	for path, want := range map[string]string{
		"/ui/":          "text/html",
		"/ui/app.js":    "javascript",
		"/ui/style.css": "text/css",
	} {
		w := f.do(t, "GET", path, "")
		if w.Code != 200 || !strings.Contains(w.Header().Get("Content-Type"), want) {
			t.Errorf("%s: %d %q", path, w.Code, w.Header().Get("Content-Type"))
		}
		if csp := w.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
			t.Errorf("%s: CSP %q", path, csp)
		}
	}
	if w := f.do(t, "GET", "/", "", "Accept", "text/html,application/xhtml+xml"); w.Code != http.StatusFound || w.Header().Get("Location") != "/ui/" {
		t.Errorf("a browser at /: %d %q", w.Code, w.Header().Get("Location"))
	}
	// Nothing on the page comes from elsewhere.
	for _, name := range []string{"index.html", "app.js", "style.css"} {
		b, err := uiFiles.ReadFile("ui/" + name)
		if err != nil {
			t.Fatal(err)
		}
		for _, bad := range []string{`src="http`, `href="http`, "url(http", "@import", "import(", "innerHTML", "eval("} {
			if bytes.Contains(b, []byte(bad)) {
				t.Errorf("ui/%s contains %q", name, bad)
			}
		}
	}
}

// TestPromtool runs Prometheus' linter over /metrics (and, through the
// registry's own tests, over every family the metrics package writes).
func TestPromtool(t *testing.T) {
	promtool := testenv.NeedTool(t, "promtool", "prometheus")
	f := newFixture(t, "")
	w := f.do(t, "GET", "/metrics", "")
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = w.Body
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}
