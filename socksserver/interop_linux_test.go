package socksserver

// Interop: real SOCKS clients (curl, ncat, proxychains4, and
// golang.org/x/net/proxy) against our server, in process on a loopback
// port, to a loopback httptest server and a loopback TCP echo. A missing
// tool skips loudly and fails under CI=true (CI installs the Debian
// packages curl, ncat and proxychains4).

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

const page = "hello from httptest"

func httpTarget(t *testing.T) (host, port string) {
	t.Helper()
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, page)
	}))
	t.Cleanup(hs.Close)
	host, port, _ = net.SplitHostPort(hs.Listener.Addr().String())
	return host, port
}

// runTool runs a peer program with a clean environment (no proxy
// variables) and a time limit, and returns its stdout, stderr and error.
func runTool(t *testing.T, stdin string, path string, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "LANG=C"}
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err := cmd.Run()
	return out.String(), errOut.String(), err
}

// requestLogged asserts that the server logged a successful request of
// version to target: the traffic really went through it.
func requestLogged(t *testing.T, srv *testServer, version, target string) {
	t.Helper()
	r := srv.logs.waitRecord(t, "request", func(m map[string]any) bool { return m["target"] == target })
	if r["version"] != version || r["reply"] != "succeeded" || r["command"] != "CONNECT" {
		t.Errorf("log record %v, want a successful %s CONNECT", r, version)
	}
}

var (
	testUsers = map[string]string{"alice": "s3cret"}
	authCfg   = Config{Users: testUsers, Socks4UserMustMatch: true}
)

func TestInteropCurl(t *testing.T) {
	curl := testenv.NeedTool(t, "curl", "curl")
	_, hport := httpTarget(t)
	for _, auth := range []bool{false, true} {
		for _, tc := range []struct {
			flag, host, version string
		}{
			{"--socks4", "127.0.0.1", "socks4"},
			{"--socks4a", "localhost", "socks4a"},
			{"--socks5", "127.0.0.1", "socks5"},
			{"--socks5-hostname", "localhost", "socks5"},
		} {
			t.Run(fmt.Sprintf("%s auth=%v", tc.flag, auth), func(t *testing.T) {
				cfg := Config{}
				args := []string{"-sS", "--max-time", "20", tc.flag}
				if auth {
					cfg = authCfg
				}
				srv := startServer(t, cfg)
				args = append(args, srv.addr)
				if auth {
					args = append(args, "--proxy-user", "alice:s3cret")
				}
				url := "http://" + net.JoinHostPort(tc.host, hport) + "/"
				out, errOut, err := runTool(t, "", curl, append(args, url)...)
				if err != nil || out != page {
					t.Fatalf("curl %v: %v\nstdout %q\nstderr %s", args, err, out, errOut)
				}
				requestLogged(t, srv, tc.version, net.JoinHostPort(tc.host, hport))
			})
		}
	}
	// Refusals: no credentials, a wrong password, an unknown SOCKS4 user.
	for _, args := range [][]string{
		{"--socks5"},
		{"--socks5", "--proxy-user", "alice:wrong"},
		{"--socks5-hostname", "--proxy-user", "bob:s3cret"},
		{"--socks4", "--proxy-user", "bob:x"},
		{"--socks4"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			srv := startServer(t, authCfg)
			full := append([]string{"-sS", "--max-time", "20", args[0], srv.addr}, args[1:]...)
			out, errOut, err := runTool(t, "", curl, append(full, "http://127.0.0.1:"+hport+"/")...)
			if err == nil || out == page {
				t.Fatalf("curl %v succeeded against a server requiring authentication: %q", full, out)
			}
			t.Logf("curl refused as expected: %v: %s", err, strings.TrimSpace(errOut))
		})
	}
}

func TestInteropNcat(t *testing.T) {
	ncat := testenv.NeedTool(t, "ncat", "ncat")
	echo := peerEcho(t, "tcp4", "127.0.0.1:0")
	ehost, eport, _ := net.SplitHostPort(echo)
	for _, tc := range []struct {
		typ, auth, version string
	}{
		{"socks4", "", "socks4"},
		{"socks5", "", "socks5"},
		{"socks4", "alice", "socks4"},
		{"socks5", "alice:s3cret", "socks5"},
	} {
		t.Run(tc.typ+" auth="+tc.auth, func(t *testing.T) {
			cfg := Config{}
			if tc.auth != "" {
				cfg = authCfg
			}
			srv := startServer(t, cfg)
			args := []string{"--proxy", srv.addr, "--proxy-type", tc.typ}
			if tc.auth != "" {
				args = append(args, "--proxy-auth", tc.auth)
			}
			args = append(args, ehost, eport)
			// ncat half-closes at the end of stdin; the echo answers and
			// closes; ncat exits. The half-close crosses the relay both ways.
			out, errOut, err := runTool(t, "hello ncat\n", ncat, args...)
			if err != nil || !strings.HasSuffix(out, "\nhello ncat\n") {
				t.Fatalf("ncat %v: %v\nstdout %q\nstderr %s", args, err, out, errOut)
			}
			requestLogged(t, srv, tc.version, echo)
		})
	}
}

func TestInteropProxychains(t *testing.T) {
	pc := testenv.NeedTool(t, "proxychains4", "proxychains4")
	curl := testenv.NeedTool(t, "curl", "curl")
	_, hport := httpTarget(t)
	for _, tc := range []struct {
		typ, creds, version string
		cfg                 Config
	}{
		{"socks5", "", "socks5", Config{}},
		{"socks5", " alice s3cret", "socks5", authCfg},
		{"socks4", "", "socks4", Config{}},
	} {
		t.Run(tc.typ+tc.creds, func(t *testing.T) {
			srv := startServer(t, tc.cfg)
			host, port, _ := net.SplitHostPort(srv.addr)
			conf := fmt.Sprintf("strict_chain\nquiet_mode\ntcp_read_time_out 15000\ntcp_connect_time_out 8000\n[ProxyList]\n%s %s %s%s\n", tc.typ, host, port, tc.creds)
			path := filepath.Join(t.TempDir(), "proxychains.conf")
			if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
				t.Fatal(err)
			}
			target := "127.0.0.1:" + hport
			out, errOut, err := runTool(t, "", pc, "-f", path, curl, "-sS", "--max-time", "20", "http://"+target+"/")
			if err != nil || out != page {
				t.Fatalf("proxychains4 curl: %v\nstdout %q\nstderr %s\nconfig:\n%s", err, out, errOut, conf)
			}
			requestLogged(t, srv, tc.version, target)
		})
	}
}

func TestInteropXNetProxy(t *testing.T) {
	echo := peerEcho(t, "tcp4", "127.0.0.1:0")
	_, eport, _ := net.SplitHostPort(echo)
	for _, tc := range []struct {
		name   string
		auth   *proxy.Auth
		target string
	}{
		{"no auth", nil, echo},
		{"no auth, hostname", nil, "localhost:" + eport},
		{"username/password", &proxy.Auth{User: "alice", Password: "s3cret"}, echo},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{}
			if tc.auth != nil {
				cfg = authCfg
			}
			srv := startServer(t, cfg)
			d, err := proxy.SOCKS5("tcp", srv.addr, tc.auth, &net.Dialer{Timeout: ioTimeout})
			if err != nil {
				t.Fatal(err)
			}
			c, err := d.(proxy.ContextDialer).DialContext(context.Background(), "tcp", tc.target)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(ioTimeout))
			readLine(t, c)
			send(t, c, []byte("x/net/proxy"))
			expect(t, c, []byte("x/net/proxy"))
			c.Close()
			requestLogged(t, srv, "socks5", tc.target)
		})
	}
	t.Run("wrong password", func(t *testing.T) {
		srv := startServer(t, authCfg)
		d, err := proxy.SOCKS5("tcp", srv.addr, &proxy.Auth{User: "alice", Password: "nope"}, &net.Dialer{Timeout: ioTimeout})
		if err != nil {
			t.Fatal(err)
		}
		if c, err := d.Dial("tcp", echo); err == nil {
			c.Close()
			t.Fatal("dial with a wrong password succeeded")
		}
	})
}
