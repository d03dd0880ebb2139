package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/metrics"
)

// The API's addresses inside the app host (where tunsocks runs), and its
// secret: one with an &, which a dashboard must escape in ?token=.
const (
	apiAddr     = "127.0.0.1:9090"
	metricsAddr = "127.0.0.1:9091"
	apiSecret   = "a&b"
)

// apiEnv is a lab whose tunsocks serves the API, decided by a config file
// the test can rewrite.
type apiEnv struct {
	*env
	cfgPath string
	http    *http.Client // dials inside the app host
}

// apiConfig: everything through the lab's SOCKS server, as "corp"; DNS on
// (a domain rule needs it).
func apiConfig(extraRules ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "proxies:\n  - name: corp\n    url: socks5://%s\nrules:\n", socksAddr)
	for _, r := range extraRules {
		fmt.Fprintf(&b, "  - %s\n", r)
	}
	b.WriteString("  - DOMAIN-SUFFIX,example.lab,corp\n  - MATCH,corp\n")
	return b.String()
}

func newAPIEnv(t *testing.T, args ...string) *apiEnv {
	t.Helper()
	cfgPath := filepath.Join(t.TempDir(), "tunsocks.yaml")
	if err := os.WriteFile(cfgPath, []byte(apiConfig()), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, ourServer, append([]string{"--config", cfgPath, "--api", apiAddr, "--api-secret", apiSecret, "--metrics", metricsAddr}, args...)...)
	a := &apiEnv{env: e, cfgPath: cfgPath}
	a.http = &http.Client{Transport: &http.Transport{DialContext: e.app.DialContext}, Timeout: 20 * time.Second}
	t.Cleanup(a.http.CloseIdleConnections)
	// The API listens before the TUN exists; it is up by now.
	if _, err := a.get(t, "/version"); err != nil {
		t.Fatal(err)
	}
	return a
}

// do makes an API request with the secret.
func (a *apiEnv) do(t *testing.T, method, path, body string) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(a.ctx, method, "http://"+apiAddr+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+apiSecret)
	resp, err := a.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (a *apiEnv) get(t *testing.T, path string) ([]byte, error) {
	t.Helper()
	code, b := a.do(t, "GET", path, "")
	if code != 200 {
		return b, fmt.Errorf("GET %s: status %d: %s", path, code, b)
	}
	return b, nil
}

type conn struct {
	ID       string   `json:"id"`
	Upload   int64    `json:"upload"`
	Download int64    `json:"download"`
	Chains   []string `json:"chains"`
	Rule     string   `json:"rule"`
	Metadata struct {
		Network         string `json:"network"`
		SourcePort      string `json:"sourcePort"`
		DestinationIP   string `json:"destinationIP"`
		DestinationPort string `json:"destinationPort"`
		Process         string `json:"process"`
		ProcessPath     string `json:"processPath"`
		TunsocksPid     int    `json:"tunsocksPid"`
		InboundName     string `json:"inboundName"`
		TunsocksRule    string `json:"tunsocksRule"`
		UpstreamAddr    string `json:"upstreamAddr"`
	} `json:"metadata"`
}

func (a *apiEnv) conns(t *testing.T) []conn {
	t.Helper()
	b, err := a.get(t, "/connections")
	if err != nil {
		t.Fatal(err)
	}
	var snap struct{ Connections []conn }
	if err := json.Unmarshal(b, &snap); err != nil {
		t.Fatalf("/connections: %v\n%s", err, b)
	}
	return snap.Connections
}

// waitConn polls /connections for the flow from the app's local port.
func (a *apiEnv) waitConn(t *testing.T, srcPort int, ok func(conn) bool) conn {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		for _, c := range a.conns(t) {
			if c.Metadata.SourcePort == strconv.Itoa(srcPort) && (ok == nil || ok(c)) {
				return c
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no flow from port %d in /connections: %+v", srcPort, a.conns(t))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// metric reads one sample from the metrics listener.
func (a *apiEnv) scrape(t *testing.T) string {
	t.Helper()
	resp, err := a.http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func sample(text, series string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

// TestAPIInLab: with flows running in the lab, the API lists them as the
// dashboards read them, DELETE of one resets the app's connection, the
// WebSocket takes the escaped secret, and /metrics passes promtool with
// counters that moved with the traffic.
func TestAPIInLab(t *testing.T) {
	a := newAPIEnv(t)
	echo := netip.AddrPortFrom(remote4, echoPort)

	before := a.scrape(t)
	c, err := a.app.DialContext(a.ctx, "tcp", echo.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	payload := bytes.Repeat([]byte("x"), 100000)
	go c.Write(payload)
	if _, err := io.ReadFull(c, make([]byte, len(payload))); err != nil {
		t.Fatalf("echo: %v", err)
	}
	src := c.LocalAddr().(*net.TCPAddr).Port
	// Both counts, not the download's alone: the relay counts bytes up
	// after its write to the upstream returns, so the echo can be back
	// (and counted down) before the last upload write is counted.
	f := a.waitConn(t, src, func(c conn) bool { return c.Download >= int64(len(payload)) && c.Upload >= int64(len(payload)) })
	if f.Metadata.Network != "tcp" || f.Metadata.DestinationIP != remote4.String() || f.Metadata.DestinationPort != "7" ||
		len(f.Chains) != 1 || f.Chains[0] != "corp" || f.Rule != "Match" || f.Metadata.InboundName != "tsk0" ||
		f.Metadata.UpstreamAddr != socksAddr.String() || !strings.Contains(f.Metadata.TunsocksRule, `"MATCH,corp"`) || f.Upload != int64(len(payload)) {
		t.Errorf("flow %+v", f)
	}
	// The test binary itself owns the socket.
	if want, _ := os.Executable(); f.Metadata.ProcessPath != want {
		t.Errorf("process path %q, want %q", f.Metadata.ProcessPath, want)
	}

	// The explain of the open flow.
	b, err := a.get(t, "/connections/"+f.ID+"/explain")
	if err != nil || !bytes.Contains(b, []byte(`"MATCH,corp"`)) || !bytes.Contains(b, []byte(`"now"`)) {
		t.Errorf("explain: %v\n%s", err, b)
	}

	// A WebSocket with the escaped secret streams the same flows.
	ctx, cancel := context.WithTimeout(a.ctx, 20*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws://"+apiAddr+"/connections?token=a%26b&interval=200", &websocket.DialOptions{HTTPClient: a.http})
	if err != nil {
		t.Fatalf("websocket with ?token=a%%26b: %v", err)
	}
	_, msg, err := ws.Read(ctx)
	ws.CloseNow()
	if err != nil || !bytes.Contains(msg, []byte(f.ID)) {
		t.Errorf("websocket message: %v %.300s", err, msg)
	}

	// DELETE resets the app's connection.
	if code, b := a.do(t, "DELETE", "/connections/"+f.ID, ""); code != http.StatusNoContent {
		t.Fatalf("DELETE: %d %s", code, b)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the app read %v after DELETE, want connection reset by peer", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for gone := false; !gone; {
		gone = true
		for _, x := range a.conns(t) {
			gone = gone && x.ID != f.ID
		}
		if time.Now().After(deadline) {
			t.Fatal("the deleted flow is still listed")
		}
	}

	// A delay test is a real request through the outbound.
	b, err = a.get(t, "/proxies/corp/delay?timeout=5000&url="+"http%3A%2F%2F"+remote4.String()+"%2F")
	var delay struct{ Delay int }
	if err != nil || json.Unmarshal(b, &delay) != nil || delay.Delay <= 0 {
		t.Errorf("delay through corp: %v %s", err, b)
	}
	if code, b := a.do(t, "GET", "/proxies/corp/delay?timeout=5000&url=http%3A%2F%2F"+remote4.String()+"%3A9%2F", ""); code != http.StatusServiceUnavailable {
		t.Errorf("delay to a closed port: %d %s, want 503", code, b)
	}
	// A refused flow counts as a dial error with its reason. (A domain
	// rule makes tunsocks wait for the first bytes of flows to addresses,
	// to read a name from them: the app is accepted, then reset.)
	if c, err := a.app.DialContext(a.ctx, "tcp", netip.AddrPortFrom(remote4, closedPort).String()); err == nil {
		c.SetDeadline(time.Now().Add(15 * time.Second))
		c.Write([]byte("x"))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Error("read from a closed port")
		}
		c.Close()
	}

	// DNS through the TUN, for the DNS metrics.
	testenv.NeedTool(t, "dig", "dnsutils")
	if out, err := a.inApp(10*time.Second, "dig", "+short", "+tries=2", "+time=3", "@198.18.0.2", "www.example.lab", "A"); err != nil || !strings.HasPrefix(strings.TrimSpace(out), "198.18.") {
		t.Errorf("dig for a fake IP: %v %s", err, out)
	}

	// /metrics: promtool passes it, and its counters moved with the flow.
	after := a.scrape(t)
	if err := metrics.Check(strings.NewReader(after)); err != nil {
		t.Errorf("lint: %v", err)
	}
	promtool := testenv.NeedTool(t, "promtool", "prometheus")
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(after)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	for series, min := range map[string]float64{
		`tunsocks_bytes_total{direction="up",outbound="corp"}`:                                       float64(len(payload)),
		`tunsocks_bytes_total{direction="down",outbound="corp"}`:                                     float64(len(payload)),
		`tunsocks_connections_total{network="tcp",inbound="tsk0",outbound="corp",rule_type="MATCH"}`: 1,
		`tunsocks_dial_duration_seconds_count{outbound="corp",result="ok"}`:                          1,
		`tunsocks_dns_queries_total{qtype="A",answer="fakeip"}`:                                      1,
		`tunsocks_tun_packets_total{direction="in"}`:                                                 10, // offload: few large segments
		`tunsocks_fakeip_pool_used{family="ipv4"}`:                                                   1,
		`tunsocks_dial_errors_total{outbound="corp",reason="refused"}`:                               1,
	} {
		got, was := sample(after, series), max(0, sample(before, series))
		if got-was < min {
			t.Errorf("%s went from %v to %v, want it up by %v or more", series, was, got, min)
		}
	}
	if !strings.Contains(after, "\ntunsocks_build_info{version=") {
		t.Error("no build info")
	}
}

// TestAPIReload: a changed rule reaches new flows while an open flow keeps
// its outbound and keeps working; a config with an error is refused with
// its file:line and the running one stays; SIGHUP and PUT /configs both
// reload.
func TestAPIReload(t *testing.T) {
	a := newAPIEnv(t)
	echo := netip.AddrPortFrom(remote4, echoPort)
	old, err := a.app.DialContext(a.ctx, "tcp", echo.String())
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	roundTrip := func(c net.Conn, msg string) error {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, msg+"\n"); err != nil {
			return err
		}
		line, err := bufio.NewReader(io.LimitReader(c, int64(len(msg)+1))).ReadString('\n')
		if err == nil && line != msg+"\n" {
			err = fmt.Errorf("echo %q", line)
		}
		return err
	}
	if err := roundTrip(old, "before"); err != nil {
		t.Fatal(err)
	}

	// The new config rejects the echo port; SIGHUP puts it in force.
	os.WriteFile(a.cfgPath, []byte(apiConfig(fmt.Sprintf("DST-PORT,%d,REJECT", echoPort))), 0o644)
	a.tunsocks.cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(a.tunsocks.out.String(), "config reloaded") {
		if time.Now().After(deadline) {
			t.Fatalf("no reload after SIGHUP:\n%s", a.tunsocks.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := a.app.DialContext(a.ctx, "tcp", echo.String()); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("a new flow to the echo port after the reload: %v, want refused by the new REJECT rule", err)
	}
	if err := roundTrip(old, "after the reload"); err != nil {
		t.Errorf("the flow open across the reload: %v", err)
	}
	if b, _ := a.get(t, "/rules"); !bytes.Contains(b, []byte(`"DST-PORT,7,REJECT"`)) {
		t.Errorf("/rules after the reload: %s", b)
	}

	// A bad config through PUT /configs: refused, with file and line.
	os.WriteFile(a.cfgPath, []byte(apiConfig("DOMAIN-SUFIX,example.lab,corp")), 0o644)
	code, b := a.do(t, "PUT", "/configs", `{"path":""}`)
	if code != http.StatusBadRequest || !bytes.Contains(b, []byte("tunsocks.yaml:5:")) || !bytes.Contains(b, []byte("DOMAIN-SUFFIX")) {
		t.Errorf("PUT of a bad config: %d %s; want 400 naming tunsocks.yaml:5 and the right keyword", code, b)
	}
	if _, err := a.app.DialContext(a.ctx, "tcp", echo.String()); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("after the refused reload, the running config changed: %v", err)
	}
	// A good one through PUT: the echo port works again for new flows.
	os.WriteFile(a.cfgPath, []byte(apiConfig()), 0o644)
	if code, b := a.do(t, "PUT", "/configs", `{"path":""}`); code != http.StatusNoContent {
		t.Fatalf("PUT of a good config: %d %s", code, b)
	}
	c, err := a.app.DialContext(a.ctx, "tcp", echo.String())
	if err != nil {
		t.Fatalf("a new flow after the rule was taken out again: %v", err)
	}
	defer c.Close()
	if err := roundTrip(c, "new"); err != nil {
		t.Error(err)
	}
	if err := roundTrip(old, "still"); err != nil {
		t.Errorf("the old flow after two reloads: %v", err)
	}
	m := a.scrape(t)
	if sample(m, `tunsocks_config_reloads_total{result="ok"}`) != 2 || sample(m, `tunsocks_config_reloads_total{result="error"}`) != 1 {
		t.Errorf("reload counters:\n%s", grep(m, "reloads"))
	}
}

func grep(text, s string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
