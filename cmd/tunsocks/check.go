package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net/netip"
	"net/url"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/tunsocks/tunsocks/check"
	"github.com/tunsocks/tunsocks/internal/direct"
)

func checkCommand() *cli.Command {
	return &cli.Command{
		Name:      "check",
		Usage:     "tell what an upstream proxy can do before trusting it",
		ArgsUsage: "URL",
		Description: "Probes the proxy at URL (socks5://, socks5h://, socks4://, socks4a:// or http://, with\n" +
			"optional user:pass@): reachability and protocol, SOCKS5 authentication (and whether wrong\n" +
			"credentials are refused), CONNECT to the target as an IPv4 literal, a name and an IPv6\n" +
			"literal, the replies for a closed port and an unroutable host, allowed ports, TLS\n" +
			"interception, UDP ASSOCIATE with a DNS query through the relay, the relay's NAT behaviour\n" +
			"(RFC 5780, with --stun), latency (--rounds) and idle timeouts (--idle).\n" +
			"Each probe is PASS, WARN, FAIL or SKIP with its time; a suggested config snippet follows.\n" +
			"--json prints the report as JSON (schema: check/schema.json in the source).\n" +
			"Exit status: 0 when no probe failed, 1 when one did, 2 for bad usage.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "target", Value: check.DefaultTarget, Usage: "host:port to CONNECT to through the proxy; a name is also resolved here to test its IPv4 and IPv6 addresses"},
			&cli.StringFlag{Name: "tls-target", Usage: "host:443 for the TLS interception and port probes (default: the target's host on port 443)"},
			&cli.StringFlag{Name: "udp-target", Usage: "DNS server host:port to query through the UDP relay (default: the first non-local nameserver of /etc/resolv.conf)"},
			&cli.StringFlag{Name: "stun", Usage: "RFC 5780 STUN server host:port for the NAT behaviour of the UDP relay (it must send OTHER-ADDRESS)"},
			&cli.IntFlag{Name: "rounds", Usage: "measure this many CONNECTs for p50/p95 connect and first-byte times"},
			&cli.DurationFlag{Name: "idle", Usage: "hold a CONNECT and a UDP association idle this long to find idle timeouts (e.g. 60s)"},
			&cli.DurationFlag{Name: "timeout", Value: check.DefaultTimeout, Usage: "how long each probe waits for an answer"},
			&cli.StringFlag{Name: "refused-target", Value: check.DefaultRefusedTarget, Usage: "host:port the proxy should find closed; the default is port 1 of the proxy host itself"},
			&cli.StringFlag{Name: "unroutable-target", Value: check.DefaultUnroutableTarget, Usage: "host:port the proxy cannot reach; the default is in TEST-NET-1, never routed"},
			&cli.BoolFlag{Name: "json", Usage: "print the report as JSON"},
		},
		Action: func(c *cli.Context) error {
			o, err := parseCheckOptions(c)
			if err != nil {
				return err
			}
			log, err := newLogger(c)
			if err != nil {
				return err
			}
			o.Log = log
			r, err := check.Run(c.Context, o)
			if err != nil {
				return usageError{err}
			}
			w := c.App.Writer
			if c.Bool("json") {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				err = enc.Encode(r)
			} else {
				err = r.WriteText(w)
			}
			if err != nil {
				return err
			}
			if code := r.ExitCode(); code != 0 {
				return cli.Exit("", code)
			}
			return nil
		},
	}
}

func parseCheckOptions(c *cli.Context) (check.Options, error) {
	if c.NArg() != 1 {
		return check.Options{}, usagef("check needs one proxy URL, like socks5://user:pass@host:1080 (got %d arguments)", c.NArg())
	}
	u, err := url.Parse(c.Args().First())
	if err != nil || u.Scheme == "" || u.Host == "" {
		return check.Options{}, usagef("proxy URL %q: want scheme://[user:pass@]host:port with scheme socks5, socks5h, socks4, socks4a or http", c.Args().First())
	}
	o := check.Options{
		Proxy:            u,
		Target:           c.String("target"),
		TLSTarget:        c.String("tls-target"),
		UDPTarget:        c.String("udp-target"),
		STUN:             c.String("stun"),
		Rounds:           c.Int("rounds"),
		Idle:             c.Duration("idle"),
		Timeout:          c.Duration("timeout"),
		RefusedTarget:    c.String("refused-target"),
		UnroutableTarget: c.String("unroutable-target"),
		Dialer:           &direct.Dialer{},
	}
	switch {
	case o.Rounds < 0 || o.Rounds > 10000:
		return o, usagef("--rounds %d: want 0 to 10000", o.Rounds)
	case o.Idle < 0:
		return o, usagef("--idle %v: want a duration like 60s", o.Idle)
	case o.Timeout <= 0:
		return o, usagef("--timeout %v: want a positive duration like 10s", o.Timeout)
	}
	if o.UDPTarget == "" {
		if f, err := os.Open("/etc/resolv.conf"); err == nil {
			o.UDPTarget = firstNameserver(f)
			f.Close()
		}
	}
	if err := o.Validate(); err != nil {
		return o, usageError{err}
	}
	return o, nil
}

// firstNameserver returns host:53 of the first nameserver in a resolv.conf
// that is not on this host (a local stub resolver, 127.0.0.53, means
// nothing to the proxy), or "".
func firstNameserver(r io.Reader) string {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil || a.IsLoopback() || a.IsUnspecified() || a.Zone() != "" {
			continue
		}
		return netip.AddrPortFrom(a.Unmap(), 53).String()
	}
	return ""
}
