package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tunsocks/tunsocks/config"
	"github.com/tunsocks/tunsocks/internal/direct"
	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/metrics"
	"github.com/tunsocks/tunsocks/router"
	"github.com/tunsocks/tunsocks/rules"
)

// TestRunAPIUsage: an API address other hosts can reach needs a secret;
// the run stops before it touches anything, with exit code 2 and what to
// do.
func TestRunAPIUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--api", "0.0.0.0:9090"}, `api.listen "0.0.0.0:9090" is reachable from other hosts and api.secret is empty`},
		{[]string{"--api", ":9090"}, "--api-secret"},
		{[]string{"--api", "127.0.0.1"}, "want address:port"},
		{[]string{"--metrics", "x:y"}, `api.metrics "x:y"`},
	} {
		var stdout, stderr testenv.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		code := run(ctx, append([]string{"tunsocks", "run", "--proxy", "direct"}, tc.args...), &stdout, &stderr)
		cancel()
		if code != exitUsage || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%v: exit %d, want %d with %q:\n%s", tc.args, code, exitUsage, tc.want, stderr.String())
		}
	}
}

// TestReload: a reload swaps the policy for new decisions; a config with
// an error is refused with file:line and the running policy stays.
func TestReload(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	write := func(rules string) {
		t.Helper()
		if err := os.WriteFile(path, []byte("proxies:\n  - name: corp\n    url: socks5://10.0.0.1:1080\nrules:\n"+rules), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("  - MATCH,corp\n")
	load := func(p string) (*config.Config, error) { return config.Load(p) }
	cfg, err := load(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := wire(cfg, &direct.Dialer{}, discardLogger(), wireOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rt, err := router.New(w.routerConfig())
	if err != nil {
		t.Fatal(err)
	}
	reg := metrics.NewRegistry()
	s := newRunState(rt, w, cfg, discardLogger(), reg, load)
	decide := func() string {
		d := w.live.Decide(&rules.Metadata{Network: "tcp", Dst: netip.MustParseAddrPort("192.0.2.1:22"), UID: -1})
		return decisionName(d)
	}
	if got := decide(); got != "corp" {
		t.Fatalf("before: %s", got)
	}
	write("  - DST-PORT,22,REJECT\n  - MATCH,corp\n")
	if err := s.reload(""); err != nil {
		t.Fatal(err)
	}
	if got := decide(); got != "REJECT" {
		t.Errorf("after the reload: %s, want REJECT", got)
	}
	write("  - DST-PORT,22,REJCT\n")
	err = s.reload("")
	if err == nil || !strings.Contains(err.Error(), "c.yaml:5:") {
		t.Errorf("a bad config: %v, want an error naming c.yaml:5", err)
	}
	if got := decide(); got != "REJECT" {
		t.Errorf("after the refused reload: %s, want the running config's REJECT", got)
	}
	if got := s.cfg.Load().Ruleset.Len(); got != 2 {
		t.Errorf("the config in force has %d rules", got)
	}
	var text bytes.Buffer
	reg.WriteText(&text)
	for _, line := range []string{`tunsocks_config_reloads_total{result="ok"} 1`, `tunsocks_config_reloads_total{result="error"} 1`} {
		if !strings.Contains(text.String(), line+"\n") {
			t.Errorf("metrics lack %s:\n%s", line, text.String())
		}
	}
	// The API's view: two rules, mode and GLOBAL, through the adapters.
	if rs := (apiRules{s}).Rules(); len(rs) != 2 || rs[0].Type != "DST-PORT" || rs[0].Target != "REJECT" {
		t.Errorf("rules %+v", rs)
	}
	ctl := apiControl{s}
	if err := ctl.SetMode("global"); err != nil {
		t.Fatal(err)
	}
	if got := decide(); got != "corp" {
		t.Errorf("global mode: %s, want corp (the first proxy)", got)
	}
	if st := ctl.Settings(); st.Mode != "global" || st.Global != "corp" || st.ConfigPath != path {
		t.Errorf("settings %+v", st)
	}
	if err := ctl.SetMode("fast"); err == nil {
		t.Error("mode fast accepted")
	}
	ps := (apiProxies{s}).Proxies()
	var names []string
	for _, p := range ps {
		names = append(names, p.Name+":"+p.Type)
	}
	if strings.Join(names, " ") != "DIRECT:Direct corp:Socks5 REJECT:Reject" {
		t.Errorf("proxies %v", names)
	}
	if b, _ := json.Marshal(ps); strings.Contains(string(b), "@") {
		t.Errorf("credentials in the proxies: %s", b)
	}
}
