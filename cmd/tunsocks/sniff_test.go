package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestExplainSNI(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "t.yaml")
	os.WriteFile(cfg, []byte(`proxies:
  - name: corp
    url: socks5://10.0.0.1:1080
rules:
  - IP-CIDR,10.0.0.0/8,DIRECT
  - DOMAIN-SUFFIX,corp.example,corp
  - DOMAIN,ads.example,REJECT
  - MATCH,DIRECT
`), 0o600)
	for _, tc := range []struct {
		args []string
		want []string
		not  []string
	}{
		{[]string{"203.0.113.7:443"}, []string{"sniff:    yes: a domain rule could match it (sniff: auto)", `rule #4 "MATCH,DIRECT"`}, nil},
		{[]string{"--sni", "WWW.corp.example", "203.0.113.7:443"}, []string{"sniffed name www.corp.example", `rule #2 "DOMAIN-SUFFIX,corp.example,corp"`,
			"dial:     www.corp.example:443, the sniffed name"}, nil},
		{[]string{"--sni", "ads.example", "203.0.113.7:443"}, []string{`rule #3 "DOMAIN,ads.example,REJECT"`, "reset right after its first bytes"}, nil},
		{[]string{"--sni", "other.example", "203.0.113.7:443"}, []string{"dial:     203.0.113.7:443, the address: DIRECT never resolves"}, nil},
		{[]string{"--sni", "www.corp.example", "10.1.1.1:443"}, []string{"comes before every domain rule", "--sni changes nothing", `rule #1 "IP-CIDR`},
			[]string{"sniffed name"}},
		{[]string{"--sni", "www.corp.example", "203.0.113.7:22"}, []string{"port 22 speaks first", `rule #4 "MATCH,DIRECT"`}, nil},
		{[]string{"--network", "udp", "--sni", "www.corp.example", "203.0.113.7:22"}, []string{`rule #2 "DOMAIN-SUFFIX`, "QUIC datagrams go where the app sent them"}, nil},
		{[]string{"corp.example:443"}, nil, []string{"sniff:"}},
	} {
		var out, errb bytes.Buffer
		args := append([]string{"tunsocks", "explain", "-c", cfg}, tc.args...)
		if code := run(t.Context(), args, &out, &errb); code != 0 {
			t.Fatalf("%v: exit %d: %s", tc.args, code, errb.String())
		}
		for _, w := range tc.want {
			if !strings.Contains(out.String(), w) {
				t.Errorf("%v: output lacks %q:\n%s", tc.args, w, out.String())
			}
		}
		for _, w := range tc.not {
			if strings.Contains(out.String(), w) {
				t.Errorf("%v: output has %q:\n%s", tc.args, w, out.String())
			}
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--sni", "1.2.3.4", "203.0.113.7:443"}, `--sni "1.2.3.4": want a DNS name`},
		{[]string{"--sni", "a.example", "corp.example:443"}, "give HOST as an address"},
	} {
		var out, errb bytes.Buffer
		args := append([]string{"tunsocks", "explain", "-c", cfg}, tc.args...)
		if code := run(t.Context(), args, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: exit %d, %q; want 2 and %q", tc.args, code, errb.String(), tc.want)
		}
	}
}

// The sniff flags are checked like the keys, before anything starts.
func TestSniffFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--sniff", "maybe"}, `sniff "maybe": want auto`},
		{[]string{"--sniff-ports", "0"}, `--sniff-ports "0": want a port 1-65535`},
		{[]string{"--sniff-server-first-ports", "ssh"}, `--sniff-server-first-ports "ssh"`},
		{[]string{"--sniff-cidr", "10.0.0.0/33"}, `--sniff-cidr "10.0.0.0/33"`},
		{[]string{"--sniff-timeout", "1ms"}, "sniff-timeout 1ms: want 10ms to 10s"},
	} {
		var out, errb bytes.Buffer
		args := append([]string{"tunsocks", "run", "--proxy", "direct", "--tun", "tsk-never"}, tc.args...)
		if code := run(t.Context(), args, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: exit %d, %q; want 2 and %q", tc.args, code, errb.String(), tc.want)
		}
	}
}
