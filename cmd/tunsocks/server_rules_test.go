package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/socks"
	"github.com/tunsocks/tunsocks/socksclient"
)

// TestServerConfigRoutesByRules: 'tunsocks server --config' decides each
// CONNECT and UDP ASSOCIATE by the config's rules, with the SOCKS user as
// IN-USER: alice's requests go through the upstream (a second tunsocks
// server), bob's directly, a rejected name gets reply 0x02.
func TestServerConfigRoutesByRules(t *testing.T) {
	echo := testenv.TCPServer(t, "tcp", "127.0.0.1:0", func(c net.Conn) { io.Copy(c, c) })
	udpEcho := testenv.UDPEcho(t).LocalAddr().String()
	t.Setenv("TUNSOCKS_LOG_LEVEL", "debug") // the front server logs its decisions
	upstream, stopUp, upLog := startCommand(t, "--listen", "127.0.0.1:0", "--allow-loopback")
	defer stopUp()

	cfgFile := filepath.Join(t.TempDir(), "rules.yaml")
	yaml := fmt.Sprintf(`proxies:
  - name: up
    url: socks5://%s
rules:
  - DOMAIN-SUFFIX,blocked.test,REJECT
  - AND,((IN-TYPE,socks),(IN-USER,alice)),up
  - MATCH,DIRECT
`, upstream)
	if err := os.WriteFile(cfgFile, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	front, stop, frontLog := startCommand(t, "--config", cfgFile, "--listen", "127.0.0.1:0", "--user", "alice:pw1", "--user", "bob:pw2", "--allow-loopback")
	defer func() {
		if code := stop(); code != exitOK {
			t.Errorf("exit %d:\n%s", code, frontLog)
		}
	}()
	if !strings.Contains(frontLog.String(), `outbound="3 rules over DIRECT, up"`) {
		t.Errorf("startup line does not name the policy:\n%s", frontLog)
	}
	client := func(user, pass string) *socksclient.Client {
		c, err := socksclient.New(&url.URL{Scheme: "socks5", Host: front, User: url.UserPassword(user, pass)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	upCount := func(cmd string) int { return strings.Count(upLog.String(), "command="+cmd) }
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()

	for _, tc := range []struct {
		user, pass string
		viaUp      bool
	}{{"alice", "pw1", true}, {"bob", "pw2", false}} {
		c := client(tc.user, tc.pass)
		before := upCount("CONNECT")
		conn, err := c.DialContext(ctx, "tcp", echo)
		if err != nil {
			t.Fatalf("%s CONNECT: %v", tc.user, err)
		}
		conn.SetDeadline(time.Now().Add(ioTimeout))
		conn.Write([]byte("hello"))
		b := make([]byte, 5)
		if _, err := io.ReadFull(conn, b); err != nil || string(b) != "hello" {
			t.Fatalf("%s: echo %q, %v", tc.user, b, err)
		}
		conn.Close()
		waitFor(t, func() bool { return (upCount("CONNECT") > before) == tc.viaUp }, "%s's CONNECT through the upstream: %v\n%s", tc.user, tc.viaUp, upLog)

		before = upCount("UDP-ASSOCIATE")
		pc, err := c.ListenPacket(ctx)
		if err != nil {
			t.Fatalf("%s UDP ASSOCIATE: %v", tc.user, err)
		}
		pc.SetDeadline(time.Now().Add(ioTimeout))
		to, _ := net.ResolveUDPAddr("udp", udpEcho)
		if _, err := pc.WriteTo([]byte("ping"), to); err != nil {
			t.Fatal(err)
		}
		n, from, err := pc.ReadFrom(b)
		if err != nil || string(b[:n]) != "ping" || from.String() != udpEcho {
			t.Fatalf("%s: UDP echo %q from %v, %v", tc.user, b[:n], from, err)
		}
		pc.Close()
		waitFor(t, func() bool { return (upCount("UDP-ASSOCIATE") > before) == tc.viaUp }, "%s's UDP through the upstream: %v\n%s", tc.user, tc.viaUp, upLog)

		_, err = c.DialContext(ctx, "tcp", "www.blocked.test:80")
		var re *socks.ReplyError
		if !errors.As(err, &re) || re.Code != socks.NotAllowed {
			t.Errorf("%s CONNECT to a rejected name: %v, want reply 0x02", tc.user, err)
		}
	}
	// The front server's decisions: by network and user.
	decisions := map[string]string{}
	for _, line := range strings.Split(frontLog.String(), "\n") {
		if !strings.Contains(line, "msg=decision") || !strings.Contains(line, "in=socks") {
			continue
		}
		for _, f := range []string{"user=alice", "user=bob"} {
			if strings.Contains(line, f) && !strings.Contains(line, "blocked.test") {
				net, out := field(line, "net"), field(line, "outbound")
				if prev, ok := decisions[f+" "+net]; ok && prev != out {
					t.Errorf("%s %s decided both %s and %s", f, net, prev, out)
				}
				decisions[f+" "+net] = out
			}
		}
	}
	want := map[string]string{"user=alice tcp": "up", "user=alice udp": "up", "user=bob tcp": "DIRECT", "user=bob udp": "DIRECT"}
	for k, v := range want {
		if decisions[k] != v {
			t.Errorf("decisions %v, want %v\n%s", decisions, want, frontLog)
			break
		}
	}
}

// field returns the value of key=value in a text log line.
func field(line, key string) string {
	i := strings.Index(line, " "+key+"=")
	if i < 0 {
		return ""
	}
	v := line[i+len(key)+2:]
	if j := strings.IndexByte(v, ' '); j >= 0 {
		v = v[:j]
	}
	return v
}

// waitFor polls cond (the servers log a request when it ends) for up to
// ioTimeout.
func waitFor(t *testing.T, cond func() bool, format string, args ...any) {
	t.Helper()
	for end := time.Now().Add(ioTimeout); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf(format, args...)
}

func TestServerConfigUsageErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.yaml")
	os.WriteFile(empty, []byte("tcp-idle: 5m\n"), 0o600)
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("rules:\n  - DOMAN,x,DIRECT\n"), 0o600)
	for _, tc := range []struct{ path, want string }{
		{empty, "nothing says where requests go"},
		{bad, bad + `:2: unknown rule type "DOMAN"`},
		{filepath.Join(dir, "missing.yaml"), "no such file"},
	} {
		var stdout, stderr testenv.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		code := run(ctx, []string{"tunsocks", "server", "--config", tc.path}, &stdout, &stderr)
		cancel()
		if code != exitUsage || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("--config %s: exit %d, stderr:\n%s\nwant exit %d and %q", tc.path, code, stderr.String(), exitUsage, tc.want)
		}
	}
}
