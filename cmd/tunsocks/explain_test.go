package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

// TestExplain: explain prints the decision for a flow, inbound rules
// included, without building the DNS: a cache file that could not be
// loaded does not matter to it.
func TestExplain(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte(`proxies:
  - name: corp
    url: socks5://10.0.0.1:1080
  - name: jump
    url: http://10.0.0.2:3128
  - name: both
    chain: [jump, corp]
rules:
  - DOMAIN-SUFFIX,blocked.test,REJECT
  - AND,((IN-TYPE,socks),(IN-USER,alice)),both
  - DOMAIN-SUFFIX,corp.test,corp
  - MATCH,DIRECT
dns:
  cache-file: `+dir+`
`), 0o600) // the cache file is a directory: a pool could not load it
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"git.corp.test:443"}, []string{"flow:     tcp 198.18.0.1:40000 -> git.corp.test:443\n", `rule:     corp by rule #3 "DOMAIN-SUFFIX,corp.test,corp"`, "outbound: corp (socks5://10.0.0.1:1080)"}},
		{[]string{"--in-type", "socks", "--in-user", "alice", "git.corp.test:443"}, []string{"-> git.corp.test:443 in socks socks (user alice)\n", `rule:     both by rule #2`, "outbound: both (chain: http://10.0.0.2:3128 -> socks5://10.0.0.1:1080)"}},
		{[]string{"--in-type", "socks", "ads.blocked.test:80"}, []string{"REJECT by rule #1", "outbound: REJECT"}},
		{[]string{"10.1.2.3:22"}, []string{`DIRECT by rule #4 "MATCH,DIRECT"`, "outbound: DIRECT"}},
	} {
		var stdout, stderr testenv.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		code := run(ctx, append([]string{"tunsocks", "explain", "--config", cfg}, tc.args...), &stdout, &stderr)
		cancel()
		if code != exitOK {
			t.Errorf("%v: exit %d\n%s", tc.args, code, stderr.String())
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(stdout.String(), w) {
				t.Errorf("%v: output lacks %q:\n%s", tc.args, w, stdout.String())
			}
		}
	}
	// --json: the same decision, as the API's explain gives it.
	var stdout, stderr testenv.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	code := run(ctx, []string{"tunsocks", "explain", "--config", cfg, "--json", "--process", "/usr/bin/curl", "git.corp.test:443"}, &stdout, &stderr)
	cancel()
	var got explained
	if err := json.Unmarshal([]byte(stdout.String()), &got); code != exitOK || err != nil {
		t.Fatalf("--json: exit %d, %v\n%s%s", code, err, stdout.String(), stderr.String())
	}
	if got.Rule == nil || got.Rule.Number != 3 || got.Rule.Text != "DOMAIN-SUFFIX,corp.test,corp" || !strings.HasSuffix(got.Rule.Source, "c.yaml:11") ||
		got.Outbound.Name != "corp" || got.Outbound.Description != "corp (socks5://10.0.0.1:1080)" ||
		got.Flow.Dst != "git.corp.test:443" || got.Flow.Process != "/usr/bin/curl" || got.Flow.Inbound.Type != "tun" {
		t.Errorf("--json: %+v", got)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"nohostport"}, `"nohostport": want HOST:PORT`},
		{[]string{"a.test:99999"}, "port must be a number from 0 to 65535"},
		{[]string{"--in-type", "vpn", "a.test:1"}, `--in-type "vpn": want tun, wireguard, exec, gateway or socks`},
	} {
		var stdout, stderr testenv.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		code := run(ctx, append([]string{"tunsocks", "explain", "--config", cfg}, tc.args...), &stdout, &stderr)
		cancel()
		if code != exitUsage || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr:\n%s\nwant exit %d and %q", tc.args, code, stderr.String(), exitUsage, tc.want)
		}
	}
}
