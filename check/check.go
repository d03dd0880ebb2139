// Package check tells what an upstream proxy can do before tunsocks trusts
// it: reachability and protocol, SOCKS5 authentication methods, CONNECT to
// IPv4, domain and IPv6 targets and the reply codes of failures, SOCKS4/4a,
// HTTP CONNECT with port restrictions and TLS interception, UDP ASSOCIATE
// with DNS through the relay, the relay's NAT behaviour (RFC 5780),
// latency percentiles and idle timeouts. Each probe gives PASS, WARN, FAIL
// or SKIP with its timing; the Report also holds the facts in a stable
// form (see schema.json) and a suggested config snippet.
//
// Every socket goes through Options.Dialer (internal/direct in the CLI),
// and every SOCKS exchange through socksclient and package socks.
package check

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tunsocks/tunsocks/internal/direct"
)

// Dialer reaches the proxy (network "tcp") and its UDP relay ("udp").
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Defaults of Options.
const (
	DefaultTarget           = "example.com:80"
	DefaultRefusedTarget    = "127.0.0.1:1"
	DefaultUnroutableTarget = "192.0.2.1:80"
	DefaultTimeout          = 10 * time.Second
)

// Options says what to check and how.
type Options struct {
	// Proxy is the upstream: socks5://, socks5h://, socks4://, socks4a://
	// or http://, with optional credentials.
	Proxy *url.URL
	// Target is the host:port CONNECT probes ask for; a name is also
	// resolved here to test its IPv4 and IPv6 literals. "" means
	// DefaultTarget.
	Target string
	// TLSTarget is the host:port of the TLS interception and port probes;
	// "" means Target's host on port 443.
	TLSTarget string
	// RefusedTarget is a host:port the proxy should find closed; "" means
	// DefaultRefusedTarget, port 1 of the proxy host itself.
	RefusedTarget string
	// UnroutableTarget is a host:port the proxy cannot reach; "" means
	// DefaultUnroutableTarget (TEST-NET-1, never routed).
	UnroutableTarget string
	// UDPTarget is a DNS server (host:port) queried through the UDP relay;
	// "" skips that probe.
	UDPTarget string
	// DNSName is the name the UDP probe asks for; "" means Target's host
	// when it is a name, else "example.com".
	DNSName string
	// STUN is the primary address of an RFC 5780 STUN server for the NAT
	// probes; "" skips them.
	STUN string
	// Rounds, when positive, measures this many CONNECTs for latency
	// percentiles.
	Rounds int
	// Idle, when positive, holds a CONNECT and a UDP association idle this
	// long to find the proxy's idle timeouts.
	Idle time.Duration
	// Timeout bounds each probe's wait; 0 means DefaultTimeout.
	Timeout time.Duration
	// NATWait is how long a NAT test waits for a STUN answer that may
	// never come; 0 means 2 s.
	NATWait time.Duration

	// Dialer reaches the proxy; nil means &direct.Dialer{}.
	Dialer Dialer
	// LookupNetIP resolves the proxy's host and the target's name here;
	// nil means the system resolver.
	LookupNetIP func(ctx context.Context, network, host string) ([]netip.Addr, error)
	// Roots verifies the certificate of TLSTarget; nil means the system's.
	Roots *x509.CertPool
	// Log receives debug records; nil discards them.
	Log *slog.Logger
}

// Verdict is a probe's outcome.
type Verdict string

// Verdicts, from best to worst; SKIP is a probe that could not or need not
// run.
const (
	Pass Verdict = "PASS"
	Warn Verdict = "WARN"
	Fail Verdict = "FAIL"
	Skip Verdict = "SKIP"
)

// Probe is one test's result.
type Probe struct {
	// ID names the probe; the IDs are listed in schema.json and stable.
	ID      string  `json:"id"`
	Verdict Verdict `json:"verdict"`
	// MS is how long the probe took, in milliseconds.
	MS float64 `json:"ms"`
	// Summary is one line for people.
	Summary string `json:"summary"`
}

// Report is the outcome of Run. Its JSON form is described by schema.json
// (SchemaVersion).
type Report struct {
	Schema  int     `json:"schema"`
	Proxy   string  `json:"proxy"`
	Verdict Verdict `json:"verdict"`
	MS      float64 `json:"ms"`
	Probes  []Probe `json:"probes"`
	Facts   Facts   `json:"facts"`
	// Config is a suggested tunsocks config snippet (YAML).
	Config string `json:"suggested_config"`
}

// SchemaVersion is Report.Schema: it changes when a field changes meaning
// or goes away (new fields may be added without a change).
const SchemaVersion = 1

// Facts are the findings in a form for scripts. A nil pointer means "not
// tested".
type Facts struct {
	// Protocol is what the proxy answered as: socks5, socks4, http, tls
	// or "" when nothing answered.
	Protocol string `json:"protocol"`
	// SuggestedURL is the URL to use when Protocol differs from the
	// URL's scheme.
	SuggestedURL string `json:"suggested_url,omitempty"`
	// Families are the address families the proxy was reached on.
	Families []string `json:"families"`
	// AuthMethods are the SOCKS5 methods the proxy accepts: none,
	// username, gssapi.
	AuthMethods []string `json:"auth_methods,omitempty"`
	// OpenProxy: the proxy serves without valid credentials.
	OpenProxy *bool        `json:"open_proxy,omitempty"`
	Connect   ConnectFacts `json:"connect"`
	TLS       *TLSFacts    `json:"tls,omitempty"`
	UDP       *UDPFacts    `json:"udp,omitempty"`
	NAT       *NATFacts    `json:"nat,omitempty"`
	Latency   *Latency     `json:"latency,omitempty"`
	Idle      *IdleFacts   `json:"idle,omitempty"`
}

// ConnectFacts are the CONNECT matrix's findings.
type ConnectFacts struct {
	IPv4   *bool `json:"ipv4,omitempty"`
	Domain *bool `json:"domain,omitempty"`
	IPv6   *bool `json:"ipv6,omitempty"`
	// BoundAddr is the BND.ADDR of the first successful CONNECT.
	BoundAddr string `json:"bound_addr,omitempty"`
	// BoundZero: that BND.ADDR was 0.0.0.0 or ::.
	BoundZero bool `json:"bound_zero,omitempty"`
	// Only443: the proxy allows port 443 and refuses the target's port.
	Only443 *bool `json:"only_443,omitempty"`
	// RefusedReply and UnroutableReply are the answers to a closed port
	// and an unroutable host: "refused", "unreachable", "not-allowed",
	// "general-failure", "rejected" (SOCKS4), "timeout", "success" or
	// "error"; RefusedMS and UnroutableMS how long they took.
	RefusedReply    string  `json:"refused_reply,omitempty"`
	RefusedMS       float64 `json:"refused_ms,omitempty"`
	UnroutableReply string  `json:"unroutable_reply,omitempty"`
	UnroutableMS    float64 `json:"unroutable_ms,omitempty"`
	// ReplyText is the failure replies as the proxy gave them.
	RefusedText    string `json:"refused_text,omitempty"`
	UnroutableText string `json:"unroutable_text,omitempty"`
}

// TLSFacts are the TLS interception probe's findings.
type TLSFacts struct {
	Target      string `json:"target"`
	Intercepted bool   `json:"intercepted"`
	Issuer      string `json:"issuer"`
	// Tool names a known interception tool from the issuer (mitmproxy,
	// Burp Suite, Charles, Fiddler), when recognised.
	Tool string `json:"tool,omitempty"`
}

// UDPFacts are the UDP ASSOCIATE probes' findings.
type UDPFacts struct {
	Supported bool   `json:"supported"`
	Reason    string `json:"reason,omitempty"`
	// BoundAddr is BND.ADDR as sent; Relay the address used.
	BoundAddr string `json:"bound_addr,omitempty"`
	Relay     string `json:"relay,omitempty"`
	BoundZero bool   `json:"bound_zero,omitempty"`
	// DNS: a DNS query through the relay was answered.
	DNS *bool `json:"dns,omitempty"`
	// ReplySource is the sender the relay named in the answer's header;
	// ReplySourceOK whether it is the server asked.
	ReplySource   string `json:"reply_source,omitempty"`
	ReplySourceOK *bool  `json:"reply_source_ok,omitempty"`
	// EndsWithControl: the relay stopped forwarding once the control
	// connection closed.
	EndsWithControl *bool `json:"ends_with_control,omitempty"`
}

// NATFacts are the RFC 5780 findings.
type NATFacts struct {
	Mapping   string `json:"mapping"`   // endpoint-independent, address-dependent, address-and-port-dependent, unknown
	Filtering string `json:"filtering"` // the same words
	Summary   string `json:"summary"`
	// Mapped are the mapped addresses of mapping tests I to III.
	Mapped []string `json:"mapped,omitempty"`
	// SourceOK: every answer's sender, as the relay named it, was the
	// RESPONSE-ORIGIN the STUN server stated.
	SourceOK bool `json:"source_ok"`
}

// Latency is the --rounds measurement.
type Latency struct {
	Rounds         int     `json:"rounds"`
	Failures       int     `json:"failures"`
	ConnectP50MS   float64 `json:"connect_p50_ms"`
	ConnectP95MS   float64 `json:"connect_p95_ms"`
	FirstByteP50MS float64 `json:"first_byte_p50_ms,omitempty"`
	FirstByteP95MS float64 `json:"first_byte_p95_ms,omitempty"`
}

// IdleFacts are the --idle findings.
type IdleFacts struct {
	HeldMS   float64 `json:"held_ms"`
	TCPAlive *bool   `json:"tcp_alive,omitempty"`
	UDPAlive *bool   `json:"udp_alive,omitempty"`
}

// ExitCode is the command's exit code for the report: 1 when a probe
// failed, else 0.
func (r *Report) ExitCode() int {
	if r.Verdict == Fail {
		return 1
	}
	return 0
}

func ptr[T any](v T) *T { return &v }

// checker is one Run.
type checker struct {
	o      Options
	scheme string // socks5, socks4, socks4a, http
	user   string
	pass   string
	hasPW  bool
	// server is the proxy's host:port with the host as the address that
	// answered, once reach has found one.
	server string
	r      *Report
	log    *slog.Logger

	// target pieces
	tHost string
	tPort string
	// okTarget is a target form that CONNECTed, for load and idle.
	okTarget string
}

// Run checks the proxy and returns the report. It fails only for options
// it cannot use; a proxy that fails every probe is a report with FAIL.
func Run(ctx context.Context, o Options) (*Report, error) {
	c, err := newChecker(o)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	c.run(ctx)
	c.r.MS = ms(time.Since(start))
	c.r.Verdict = Pass
	for _, p := range c.r.Probes {
		switch {
		case p.Verdict == Fail:
			c.r.Verdict = Fail
		case p.Verdict == Warn && c.r.Verdict == Pass:
			c.r.Verdict = Warn
		}
	}
	c.r.Config = suggest(c)
	return c.r, nil
}

// Validate reports what is wrong with the options, as Run would.
func (o Options) Validate() error {
	_, err := newChecker(o)
	return err
}

func newChecker(o Options) (*checker, error) {
	if o.Proxy == nil {
		return nil, errors.New("check: no proxy URL")
	}
	c := &checker{o: o, scheme: strings.ToLower(o.Proxy.Scheme)}
	switch c.scheme {
	case "socks5h":
		c.scheme = "socks5"
	case "socks5", "socks4", "socks4a", "http":
	default:
		return nil, fmt.Errorf("check: proxy URL scheme %q: want socks5, socks5h, socks4, socks4a or http", o.Proxy.Scheme)
	}
	if o.Proxy.Hostname() == "" {
		return nil, fmt.Errorf("check: proxy URL %q names no host", o.Proxy.Redacted())
	}
	if o.Proxy.User != nil {
		c.user = o.Proxy.User.Username()
		c.pass, c.hasPW = o.Proxy.User.Password()
	}
	if c.o.Target == "" {
		c.o.Target = DefaultTarget
	}
	var err error
	if c.tHost, c.tPort, err = net.SplitHostPort(c.o.Target); err != nil || c.tHost == "" {
		return nil, fmt.Errorf("check: target %q: want host:port, like example.com:80", c.o.Target)
	}
	if p, err := strconv.Atoi(c.tPort); err != nil || p < 1 || p > 65535 {
		return nil, fmt.Errorf("check: target %q: port must be 1 to 65535", c.o.Target)
	}
	if c.o.TLSTarget == "" {
		c.o.TLSTarget = net.JoinHostPort(c.tHost, "443")
	}
	if c.o.RefusedTarget == "" {
		c.o.RefusedTarget = DefaultRefusedTarget
	}
	if c.o.UnroutableTarget == "" {
		c.o.UnroutableTarget = DefaultUnroutableTarget
	}
	for name, v := range map[string]string{"TLS target": c.o.TLSTarget, "refused target": c.o.RefusedTarget, "unroutable target": c.o.UnroutableTarget, "UDP target": c.o.UDPTarget, "STUN server": c.o.STUN} {
		if v == "" {
			continue
		}
		if h, p, err := net.SplitHostPort(v); err != nil || h == "" || p == "" {
			return nil, fmt.Errorf("check: %s %q: want host:port", name, v)
		}
	}
	if c.o.Timeout <= 0 {
		c.o.Timeout = DefaultTimeout
	}
	if c.o.NATWait <= 0 {
		c.o.NATWait = 2 * time.Second
	}
	if c.o.Dialer == nil {
		c.o.Dialer = &direct.Dialer{}
	}
	if c.o.LookupNetIP == nil {
		c.o.LookupNetIP = (&net.Resolver{}).LookupNetIP
	}
	c.log = o.Log
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.r = &Report{Schema: SchemaVersion, Proxy: o.Proxy.Redacted(), Probes: []Probe{}, Facts: Facts{Families: []string{}}}
	return c, nil
}

// probe runs fn as probe id and records its verdict and time.
func (c *checker) probe(id string, fn func() (Verdict, string)) Verdict {
	start := time.Now()
	v, s := fn()
	p := Probe{ID: id, Verdict: v, MS: ms(time.Since(start)), Summary: s}
	if v == Skip {
		p.MS = 0
	}
	c.r.Probes = append(c.r.Probes, p)
	c.log.Debug("probe", "id", id, "verdict", string(v), "ms", p.MS, "summary", s)
	return v
}

func (c *checker) skip(id, why string) { c.probe(id, func() (Verdict, string) { return Skip, why }) }

func ms(d time.Duration) float64 { return float64(d.Round(10*time.Microsecond)) / 1e6 }

func (c *checker) run(ctx context.Context) {
	if !c.reach(ctx) {
		return
	}
	if !c.identify(ctx) {
		return
	}
	if c.scheme == "socks5" && !c.methods(ctx) {
		return
	}
	if c.scheme == "http" && !c.httpAuth(ctx) {
		return
	}
	c.connectMatrix(ctx)
	c.ports(ctx)
	c.failureReplies(ctx)
	c.tlsIntercept(ctx)
	c.udp(ctx)
	c.nat(ctx)
	c.load(ctx)
	c.idle(ctx)
}
