package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime/pprof"
	"runtime/trace"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tunsocks/tunsocks/api"
	"github.com/tunsocks/tunsocks/config"
	"github.com/tunsocks/tunsocks/hostnet"
	"github.com/tunsocks/tunsocks/internal/direct"
	"github.com/tunsocks/tunsocks/internal/memguard"
	"github.com/tunsocks/tunsocks/internal/memtrim"
	"github.com/tunsocks/tunsocks/internal/relay"
	"github.com/tunsocks/tunsocks/metrics"
	"github.com/tunsocks/tunsocks/policy"
	"github.com/tunsocks/tunsocks/procinfo"
	"github.com/tunsocks/tunsocks/router"
	"github.com/tunsocks/tunsocks/rules"
	"github.com/tunsocks/tunsocks/stack"
	"github.com/tunsocks/tunsocks/tun"
)

func runFlags() []cli.Flag {
	env := func(name string) []string {
		return []string{"TUNSOCKS_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))}
	}
	d := config.Default()
	return append([]cli.Flag{
		&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "YAML config file (proxies, rules, dns and every flag below); flags override it", EnvVars: env("config")},
		&cli.BoolFlag{Name: "print-example-config", Usage: "print a commented example config and exit"},
		&cli.StringFlag{Name: "proxy", Usage: "default upstream: socks5://[user:pass@]host:port, socks4://, socks4a://, http://, a proxy name from the config, or 'direct'", EnvVars: env("proxy")},
		&cli.StringFlag{Name: "tun", Value: d.Tun.Name, Usage: "TUN device to create (or attach to)", EnvVars: env("tun")},
		&cli.IntFlag{Name: "tun-fd", Value: -1, Usage: "adopt an already open TUN descriptor (Android VpnService); addresses and routes are left alone", EnvVars: env("tun-fd")},
		&cli.StringSliceFlag{Name: "tun-addr", Value: cli.NewStringSlice("198.18.0.1/15", "fc00::1/18"), Usage: "address of the TUN device, CIDR (repeatable)", EnvVars: env("tun-addr")},
		&cli.IntFlag{Name: "mtu", Value: d.Tun.MTU, Usage: "MTU of the TUN device (576..65535)", EnvVars: env("mtu")},
		&cli.BoolFlag{Name: "offload", Value: true, Usage: "use the TUN's TSO/GRO offload (virtio-net header) on Linux", EnvVars: env("offload")},
		&cli.StringFlag{Name: "pcap", Usage: "write every packet crossing the TUN to this pcap file", EnvVars: env("pcap")},
		&cli.DurationFlag{Name: "tcp-idle", Value: d.TCPIdle, Usage: "close TCP flows idle this long", EnvVars: env("tcp-idle")},
		&cli.DurationFlag{Name: "udp-idle", Value: d.UDPIdle, Usage: "expire UDP flows idle this long", EnvVars: env("udp-idle")},
		&cli.DurationFlag{Name: "dns-idle", Value: d.DNSIdle, Usage: "expire UDP flows to port 53 idle this long", EnvVars: env("dns-idle")},
		&cli.DurationFlag{Name: "dial-timeout", Value: d.DialTimeout, Usage: "time to reach the upstream before the app's SYN gets a RST", EnvVars: env("dial-timeout")},
		&cli.DurationFlag{Name: "summary-interval", Value: d.SummaryInterval, Usage: "log a one-line summary this often (0: never)", EnvVars: env("summary-interval")},
		&cli.UintFlag{Name: "fwmark", Usage: "SO_MARK for tunsocks' own sockets, so policy routing can keep them off the TUN", EnvVars: env("fwmark")},
		&cli.StringFlag{Name: "out-interface", Usage: "bind tunsocks' own sockets to this interface (SO_BINDTODEVICE)", EnvVars: env("out-interface")},
		&cli.BoolFlag{Name: "tcp-sack", Value: true, Usage: "TCP selective acknowledgements in the netstack", EnvVars: env("tcp-sack")},
		&cli.BoolFlag{Name: "tcp-moderate-rcvbuf", Value: true, Usage: "let the netstack grow receive buffers as throughput needs", EnvVars: env("tcp-moderate-rcvbuf")},
		&cli.IntFlag{Name: "tcp-buf", Value: d.TCP.Buf, Usage: "maximum TCP send and receive buffer per flow in the netstack, bytes", EnvVars: env("tcp-buf")},
		&cli.DurationFlag{Name: "tcp-ack-delay", Value: d.TCP.AckDelay, Usage: "netstack: hold an ACK toward the app this long for a reply to carry it (0: off)", EnvVars: env("tcp-ack-delay")},
		&cli.StringFlag{Name: "tcp-cc", Value: d.TCP.CC, Usage: "netstack congestion control: cubic or reno", EnvVars: env("tcp-cc")},
		&cli.StringFlag{Name: "tcp-stack", Value: d.TCP.Stack, Usage: "who terminates the app's TCP: gvisor (userspace netstack) or system (the host kernel, through address translation on the TUN; cheaper per connection)", EnvVars: env("tcp-stack")},
		&cli.StringFlag{Name: "max-memory", Value: "1GiB", Usage: "memory ceiling (e.g. 512MiB, 2GiB): near it new flows are refused and the flows idle the longest closed, before the kernel would kill tunsocks (0: none)", EnvVars: env("max-memory")},
		&cli.IntFlag{Name: "tcp-max-in-flight", Value: stack.DefaultMaxInFlight, Usage: "TCP connection attempts in flight (SYN held while the upstream is dialed, then the app's handshake); at the bound the oldest is shed", EnvVars: env("tcp-max-in-flight")},
		&cli.IntFlag{Name: "tcp-max-in-flight-per-source", Value: stack.DefaultMaxInFlightPerSource, Usage: "the same per app source address", EnvVars: env("tcp-max-in-flight-per-source")},
		&cli.DurationFlag{Name: "tcp-handshake-timeout", Value: stack.DefaultHandshakeTimeout, Usage: "an accepted TCP attempt whose app has not completed its handshake by then fails, and its upstream connection is closed", EnvVars: env("tcp-handshake-timeout")},
		&cli.IntFlag{Name: "udp-max-flows", Value: stack.DefaultMaxUDPFlows, Usage: "UDP flows open at once; a new one beyond closes the least recently active", EnvVars: env("udp-max-flows")},
		&cli.IntFlag{Name: "udp-max-flows-per-source", Value: stack.DefaultMaxUDPFlowsPerSource, Usage: "the same per app source address", EnvVars: env("udp-max-flows-per-source")},
		&cli.IntFlag{Name: "udp-flow-rate", Value: stack.DefaultNewUDPFlowRate, Usage: "new UDP flows a second; datagrams that would open more are dropped", EnvVars: env("udp-flow-rate")},
		&cli.IntFlag{Name: "udp-flow-rate-per-source", Value: stack.DefaultNewUDPFlowRatePerSource, Usage: "the same per app source address", EnvVars: env("udp-flow-rate-per-source")},
		&cli.BoolFlag{Name: "dns", Usage: "answer DNS on the TUN with fake IPs (default: on when a rule needs a domain)", EnvVars: env("dns")},
		&cli.BoolFlag{Name: "dns-hijack", Usage: "answer every DNS query to port 53, whatever its address", EnvVars: env("dns-hijack")},
		&cli.StringFlag{Name: "cpuprofile", Hidden: true, Usage: "write a Go CPU profile of the whole run to this file (for scripts/bench.sh -run-args)"},
		&cli.BoolFlag{Name: "memtrim", Value: true, Hidden: true, Usage: "give free heap back to the system after a burst, once traffic is quiet, and unmap the code only start-up ran (false to measure without)"},
		&cli.StringFlag{Name: "pprof", Hidden: true, Usage: "serve runtime profiles on this loopback address (GET /debug/pprof/heap?gc=1; for scripts/bench.sh -heap-profiles)"},
		&cli.StringFlag{Name: "trace", Hidden: true, Usage: "write a Go execution trace of the whole run to this file (for scripts/bench.sh -run-args; `go tool trace` reads it)"},
		&cli.StringSliceFlag{Name: "nameserver", Usage: "resolver for real answers: ip[:port], udp://, tcp:// (repeatable)", EnvVars: env("nameserver")},
		&cli.StringFlag{Name: "api", Usage: "serve the Clash-compatible API (metacubexd, yacd, zashboard), the live page /ui/ and /metrics on ADDR, like 127.0.0.1:9090", EnvVars: env("api")},
		&cli.StringFlag{Name: "api-secret", Usage: "Bearer secret the API requires; needed when --api is an address other hosts can reach", EnvVars: env("api-secret")},
		&cli.StringFlag{Name: "metrics", Usage: "serve /metrics alone, without the secret, on ADDR, like 127.0.0.1:9091", EnvVars: env("metrics")},
	}, append(sniffFlags(env), routeFlags()...)...)
}

// loadRunConfig reads --config (or starts from the defaults), lets the flags
// the user set override it, and validates the result as a whole, once.
func loadRunConfig(c *cli.Context) (*config.Config, error) {
	return loadRunConfigFrom(c, c.String("config"))
}

// loadRunConfigFrom is loadRunConfig with the config file at path ("":
// none); a reload reads the file again this way.
func loadRunConfigFrom(c *cli.Context, path string) (*config.Config, error) {
	return loadConfigAt(c, path, func(cfg *config.Config) error {
		if err := tunFlagsOverride(c, cfg); err != nil {
			return err
		}
		return runFlagsOverride(c, cfg)
	})
}

// loadConfigWith is loadRunConfig with the flags applied by flags.
func loadConfigWith(c *cli.Context, flags func(*config.Config) error) (*config.Config, error) {
	return loadConfigAt(c, c.String("config"), flags)
}

// loadConfigAt is loadConfigWith with the config file at path ("": none).
func loadConfigAt(c *cli.Context, path string, flags func(*config.Config) error) (*config.Config, error) {
	var cfg *config.Config
	var err error
	if path != "" {
		cfg, err = config.Load(path, flags)
	} else {
		cfg = config.Default()
		if err = flags(cfg); err == nil {
			err = cfg.Validate()
		}
	}
	if err != nil {
		return nil, usageError{err}
	}
	if cfg.Proxy == "" && len(cfg.Rules) == 0 {
		return nil, usagef("nothing says where flows go: give --proxy socks5://host:port (or --proxy direct), or a --config with proxy: or rules:")
	}
	return cfg, nil
}

// tunFlagsOverride sets in cfg the TUN's flags the user gave (run's only).
func tunFlagsOverride(c *cli.Context, cfg *config.Config) error {
	set := c.IsSet
	if set("tun") {
		cfg.Tun.Name = c.String("tun")
	}
	if set("tun-fd") {
		cfg.Tun.FD = c.Int("tun-fd")
	}
	if set("tun-addr") || len(cfg.Tun.Addrs) == 0 {
		cfg.Tun.Addrs = nil
		for _, s := range c.StringSlice("tun-addr") {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return fmt.Errorf("--tun-addr %q: want an address with prefix length, like 198.18.0.1/15 or fc00::1/18", s)
			}
			cfg.Tun.Addrs = append(cfg.Tun.Addrs, p)
		}
	}
	if set("mtu") {
		cfg.Tun.MTU = c.Int("mtu")
	}
	if set("offload") {
		cfg.Tun.Offload = c.Bool("offload")
	}
	if set("pcap") {
		cfg.Tun.Pcap = c.String("pcap")
	}
	if set("tcp-stack") {
		cfg.TCP.Stack = c.String("tcp-stack")
	}
	return nil
}

// runFlagsOverride sets in cfg the value of every other flag the user gave
// (run's and wg's).
func runFlagsOverride(c *cli.Context, cfg *config.Config) error {
	set := c.IsSet
	if set("proxy") {
		cfg.Proxy = c.String("proxy")
	}
	for name, dst := range map[string]*time.Duration{"tcp-idle": &cfg.TCPIdle, "udp-idle": &cfg.UDPIdle, "dns-idle": &cfg.DNSIdle,
		"dial-timeout": &cfg.DialTimeout, "summary-interval": &cfg.SummaryInterval} {
		if set(name) {
			*dst = c.Duration(name)
		}
	}
	if set("fwmark") {
		m := c.Uint("fwmark")
		if m > 0xffffffff {
			return fmt.Errorf("--fwmark %d: want a 32-bit mark", m)
		}
		cfg.Fwmark = uint32(m)
	}
	if set("out-interface") {
		cfg.OutInterface = c.String("out-interface")
	}
	if set("tcp-sack") {
		v := c.Bool("tcp-sack")
		cfg.TCP.SACK = &v
	}
	if set("tcp-moderate-rcvbuf") {
		v := c.Bool("tcp-moderate-rcvbuf")
		cfg.TCP.ModerateRcvbuf = &v
	}
	if set("tcp-buf") {
		cfg.TCP.Buf = c.Int("tcp-buf")
	}
	if set("tcp-cc") {
		cfg.TCP.CC = c.String("tcp-cc")
	}
	if set("tcp-ack-delay") {
		cfg.TCP.AckDelay = c.Duration("tcp-ack-delay")
	}
	if set("max-memory") {
		n, err := config.ParseSize(c.String("max-memory"))
		if err != nil {
			return fmt.Errorf("--max-memory: %v", err)
		}
		cfg.Limits.MaxMemory = n
	}
	l := &cfg.Limits
	for name, dst := range map[string]*int{"tcp-max-in-flight": &l.TCPMaxInFlight, "tcp-max-in-flight-per-source": &l.TCPMaxInFlightPerSource,
		"udp-max-flows": &l.UDPMaxFlows, "udp-max-flows-per-source": &l.UDPMaxFlowsPerSource,
		"udp-flow-rate": &l.UDPFlowRate, "udp-flow-rate-per-source": &l.UDPFlowRatePerSource} {
		if set(name) {
			if *dst = c.Int(name); *dst <= 0 {
				return fmt.Errorf("--%s %d: want a positive number", name, *dst)
			}
		}
	}
	if set("tcp-handshake-timeout") {
		if l.TCPHandshakeTimeout = c.Duration("tcp-handshake-timeout"); l.TCPHandshakeTimeout <= 0 {
			return fmt.Errorf("--tcp-handshake-timeout %v: want a positive duration like 5s", l.TCPHandshakeTimeout)
		}
	}
	if set("dns") {
		v := c.Bool("dns")
		cfg.DNS.Enable = &v
	}
	if set("dns-hijack") {
		cfg.DNS.Hijack = c.Bool("dns-hijack")
	}
	if set("nameserver") {
		cfg.DNS.Nameservers = c.StringSlice("nameserver")
	}
	if set("api") {
		cfg.API.Listen = c.String("api")
	}
	if set("api-secret") {
		cfg.API.Secret = c.String("api-secret")
	}
	if set("metrics") {
		cfg.API.Metrics = c.String("metrics")
	}
	if err := applySniffFlags(c, cfg); err != nil {
		return err
	}
	return applyRouteFlags(c, cfg)
}

func runCommand() *cli.Command {
	return &cli.Command{
		Name:  "run",
		Usage: "capture traffic on a TUN device and carry it through a SOCKS upstream",
		Description: "Creates (or adopts) a TUN device and proxies every TCP and UDP flow that reaches it.\n" +
			"With --auto-route every app of this host goes through it (--kill-switch: and nothing else,\n" +
			"even if tunsocks dies); with --gateway, devices that use this host as their gateway do.\n" +
			"Without either, point routes at the device yourself, e.g. ip route add default dev tunsocks0.\n" +
			"Runs until SIGINT or SIGTERM, then closes every flow and removes the device and every\n" +
			"rule it created. After a crash: tunsocks cleanup.\n" +
			"SIGHUP re-reads the config: new flows follow its rules and proxies, open flows keep theirs;\n" +
			"a config with errors is refused and the running one stays. With --api, the page at\n" +
			"http://ADDR/ui/ lists every flow and closes them; dashboards for Clash use the same address.",
		Flags: runFlags(),
		Action: func(c *cli.Context) error {
			if c.Bool("print-example-config") {
				fmt.Fprint(c.App.Writer, config.Example())
				return nil
			}
			log, hub, level, err := newLiveLogger(c)
			if err != nil {
				return err
			}
			cfg, err := loadRunConfig(c)
			if err != nil {
				return err
			}
			if path := c.String("cpuprofile"); path != "" {
				stop, err := startCPUProfile(path)
				if err != nil {
					return err
				}
				defer stop()
			}
			if path := c.String("trace"); path != "" {
				stop, err := startTrace(path)
				if err != nil {
					return err
				}
				defer stop()
			}
			if addr := c.String("pprof"); addr != "" {
				if err := startPprof(c.Context, addr, log); err != nil {
					return err
				}
			}
			sampleAllocations(c.String("pprof") != "")
			return runPipeline(c.Context, cfg, log, pipelineHooks{
				stdout:   c.App.Writer,
				stateDir: c.String("state-dir"),
				notice:   c.App.ErrWriter,
				load:     func(path string) (*config.Config, error) { return loadRunConfigFrom(c, path) },
				logs:     hub,
				level:    level,
				noTrim:   !c.Bool("memtrim"),
			})
		},
	}
}

// pipelineHooks let the demo run the pipeline inside a lab namespace.
type pipelineHooks struct {
	// inNetns wraps work that must happen in the TUN's namespace (opening
	// and configuring the device); nil runs it here.
	inNetns func(func() error) error
	netns   string // the namespace for tunsocks' own sockets
	// started is called once the device is up, with its name.
	started func(dev string)
	onFlow  func(router.FlowRecord)
	// noTUN runs without a TUN ('tunsocks wg': the WireGuard inbound
	// alone, unprivileged).
	noTUN bool
	// device, when set, provides the TUN instead of cfg.Tun: exec builds
	// its sandbox here, once the wiring (whose DNS address goes into the
	// sandbox's resolv.conf) exists.
	device func(ctx context.Context, w *wiring) (*tun.Device, error)
	// decide, when set, wraps the policy's decider.
	decide func(router.Decider) router.Decider
	// inbound, when set, is the inbound the TUN's flows carry instead of
	// the TUN's own.
	inbound *router.Inbound
	// lookup, when set, finds the processes of flows for process rules
	// instead of a Finder of this namespace.
	lookup policy.ProcessLookup
	// stdout is where client configs and QR codes are printed.
	stdout io.Writer
	// stateDir is where host routing records what it installs; notice
	// receives the startup block saying what and how to undo it.
	stateDir string
	notice   io.Writer
	// load re-reads the config for a reload (SIGHUP, PUT /configs); nil:
	// no reloads.
	load func(path string) (*config.Config, error)
	// logs and level are the logger's fan-out to /logs and its level
	// (PATCH /configs log-level); nil without them.
	logs  *api.LogHub
	level *slog.LevelVar
	// noTrim leaves memory to the runtime alone (see internal/memtrim).
	noTrim bool
}

// inTunNetns runs fn where the TUN lives: through inNetns, or here.
func (h pipelineHooks) inTunNetns(fn func() error) error {
	if h.inNetns != nil {
		return h.inNetns(fn)
	}
	return fn()
}

// runPipeline is 'tunsocks run' (and 'tunsocks wg'): inbounds (the TUN,
// the WireGuard peers) -> stack -> router -> outbound.
func runPipeline(ctx context.Context, cfg *config.Config, log *slog.Logger, hooks pipelineHooks) (rerr error) {
	notice := hooks.notice
	if notice == nil {
		notice = io.Discard
	}
	// Before anything dials: routing the host marks tunsocks' sockets and
	// pins the upstreams' addresses.
	hr, err := prepareRoute(ctx, cfg, hooks.stateDir, notice, log)
	if err != nil {
		return err
	}
	if hr != nil && hooks.noTUN {
		return usagef("routing the host (auto-route, gateway) needs the TUN: use 'tunsocks run'")
	}
	d := &direct.Dialer{Mark: cfg.Fwmark, Interface: cfg.OutInterface, Netns: hooks.netns, Timeout: cfg.DialTimeout}
	if hr != nil {
		d.Hosts = hr.pinned
	}
	var wgs *wgState
	if cfg.WireGuard != nil {
		if wgs, err = openWGState(cfg.WireGuard, log); err != nil {
			return err
		}
	}
	reg := metrics.NewRegistry()
	registerProcessMetrics(reg, time.Now())
	w, err := wire(cfg, d, log, wireOptions{dns: true, process: true, lookup: hooks.lookup, dnsObserve: dnsMetrics(reg)})
	if err != nil {
		return err
	}
	defer w.close(log)
	if w.pool != nil {
		registerPoolMetrics(reg, w.pool)
	}
	rc := w.routerConfig()
	if wgs != nil {
		rc = w.wireGuardPolicy(rc, cfg.WireGuard, wgs.state)
	}
	rc.DialTimeout, rc.TCPIdle, rc.UDPIdle, rc.DNSIdle = cfg.DialTimeout, cfg.TCPIdle, cfg.UDPIdle, cfg.DNSIdle
	rc.Logger, rc.OnFlow, rc.Metrics = log, hooks.onFlow, reg
	var guard *memguard.Guard
	var rt *router.Router
	if cfg.Limits.MaxMemory > 0 {
		// The flows idle the longest go first, an eighth at a time.
		guard = memguard.New(memguard.Config{Limit: cfg.Limits.MaxMemory, Logger: log, Shed: func() int { return rt.ShedIdle(1.0 / 8) }})
		rc.Admit = guard.Allow
	}
	rc.Sniff = w.sniffConfig()
	if hooks.decide != nil {
		rc.Decide = hooks.decide(rc.Decide)
	}
	// Idle flows park their upstream reads on one epoll instance instead
	// of a goroutine each (Linux; elsewhere they keep the goroutine).
	if pl, err := relay.NewPoller(); err == nil {
		rc.Poller = pl
		defer pl.Close() // after the stack and the router (deferred later, run first)
	} else {
		log.Debug("relay poller unavailable; idle flows keep a goroutine", "err", err)
	}
	if cfg.API.Listen != "" {
		// The flow table shows every flow's process; looked up only while
		// someone lists the flows (exec: in its sandbox).
		rc.Process = hooks.lookup
		if rc.Process == nil {
			rc.Process = procinfo.NewFinder(2 * time.Second).LookupOwner
		}
	}
	rt, err = router.New(rc)
	if err != nil {
		return err
	}
	if guard != nil {
		gctx, stopGuard := context.WithCancel(ctx)
		guardDone := make(chan struct{})
		go func() { guard.Run(gctx); close(guardDone) }()
		defer func() { stopGuard(); <-guardDone }()
	}
	rs := newRunState(rt, w, cfg, log, reg, hooks.load)
	// The API's listeners come first: an address in use stops the run
	// before it touches the network.
	var apiLn, metricsLn net.Listener
	if cfg.API.Listen != "" {
		if apiLn, err = net.Listen("tcp", cfg.API.Listen); err != nil {
			return fmt.Errorf("api: %w", err)
		}
		defer apiLn.Close()
	}
	if cfg.API.Metrics != "" {
		if metricsLn, err = net.Listen("tcp", cfg.API.Metrics); err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
		defer metricsLn.Close()
	}
	l := cfg.Limits
	tcp := stack.TCPOptions{SendBuf: cfg.TCP.Buf, RecvBuf: cfg.TCP.Buf, CongestionControl: cfg.TCP.CC,
		MaxInFlight: l.TCPMaxInFlight, MaxInFlightPerSource: l.TCPMaxInFlightPerSource, HandshakeTimeout: l.TCPHandshakeTimeout}
	if cfg.TCP.SACK != nil {
		tcp.DisableSACK = !*cfg.TCP.SACK
	}
	if cfg.TCP.ModerateRcvbuf != nil {
		tcp.DisableModerateReceiveBuffer = !*cfg.TCP.ModerateRcvbuf
	}
	tcp.AckDelay = cfg.TCP.AckDelay
	if tcp.AckDelay == 0 {
		tcp.AckDelay = -1 // off (the stack's 0 means its default)
	}

	var tr *tunRun
	if !hooks.noTUN {
		if tr, err = startTUN(ctx, cfg, w, rt, tcp, hooks, log); err != nil {
			return err
		}
		defer tr.close()
		log.Info("tunsocks running", "tun", tr.dev.Name(), "addrs", cfg.Tun.Addrs, "mtu", cfg.Tun.MTU, "tcp-stack", tcpStackName(cfg, tr.st), "outbound", w.policy.Summary(), "dns", w.dnsSummary(), "sniff", cfg.Sniff.Mode, "pcap", cfg.Tun.Pcap,
			"max_memory", memoryName(cfg.Limits.MaxMemory))
	}
	var wgr *wgRun
	if wgs != nil {
		if wgr, err = startWireGuard(ctx, cfg, wgs, rt, d, tcp, hooks.stdout, log); err != nil {
			return err
		}
		defer wgr.close()
		if hooks.noTUN {
			log.Info("tunsocks running", "wireguard", wgr.in.LocalAddrs(), "outbound", w.policy.Summary(), "dns", w.dnsSummary(), "sniff", cfg.Sniff.Mode,
				"max_memory", memoryName(cfg.Limits.MaxMemory))
		}
	}
	if hr != nil {
		// Removed (deferred) before the device is closed.
		defer func() { rerr = errors.Join(rerr, hr.close()) }()
		if err := hr.install(ctx, tr.dev.Name(), cfg.Tun.Addrs, w.dnsAddrs()); err != nil {
			return err
		}
	}
	if tr != nil {
		rs.tun = tr.dev.Name()
		rs.st.Store(tr.st)
	}
	registerStackMetrics(reg, func() []*stack.Stack { return []*stack.Stack{tr.stack(), wgr.stack()} })
	// The API's servers stop when serveCtx does, before the stacks close,
	// and the run waits for them.
	serveCtx, stopServing := context.WithCancel(ctx)
	var servers sync.WaitGroup
	defer servers.Wait()
	defer stopServing()
	if apiLn != nil {
		if hooks.logs != nil {
			registerLogMetrics(reg, hooks.logs)
		}
		srv, err := api.New(rs.apiConfig(cfg, hooks.logs, hooks.level, reg))
		if err != nil {
			return err
		}
		servers.Add(1)
		go func() {
			defer servers.Done()
			if err := srv.Serve(serveCtx, apiLn); err != nil {
				log.Warn("api stopped", "err", err)
			}
		}()
		log.Info("api listening", "addr", apiLn.Addr(), "page", "http://"+apiLn.Addr().String()+"/ui/", "secret", cfg.API.Secret != "")
	}
	if metricsLn != nil {
		servers.Add(1)
		go func() {
			defer servers.Done()
			if err := api.ServeMetrics(serveCtx, metricsLn, reg, log); err != nil {
				log.Warn("metrics listener stopped", "err", err)
			}
		}()
		log.Info("metrics listening", "addr", metricsLn.Addr(), "path", "/metrics")
	}
	hup := make(chan os.Signal, 1)
	if hooks.load != nil {
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
	}
	if hooks.started != nil && tr != nil {
		hooks.started(tr.dev.Name())
	}
	if err := w.serveExtraDNS(ctx, log); err != nil {
		return err
	}

	if !hooks.noTrim {
		// Start-up is done: its garbage, and the code it alone ran, go
		// out of the resident set. It ran a little of nearly every
		// package linked in, and the kernel mapped 64 KiB of the binary
		// around each page touched: most of the executable was resident
		// (18 of the 30 MiB after start on Linux/amd64). The code flows
		// run maps back in on first use.
		//
		// Before that, the kernel stops mapping 64 KiB of the executable
		// around each page read ("fault-around"): what the program maps
		// back afterwards is then the pages it reads, not 16 times that
		// (the file-backed part of RSS after start-up and one connection
		// fell from 11.6 to 3.3 MiB on Linux/amd64).
		if nfa, err := memtrim.NoFaultAround(); err == nil {
			defer nfa.Close()
		} else {
			log.Debug("the kernel keeps faulting the executable around each page read", "err", err)
		}
		n, err := memtrim.Settle()
		log.Debug("start-up memory trimmed", "code_unmapped", n, "err", err)
		// After a burst (a bulk transfer, thousands of handshakes) the
		// runtime keeps the heap and the grown stacks; once traffic is
		// quiet they go back to the system. A new flow counts as 4 KiB
		// of activity. The code and tables the burst ran (2-3.5 MiB of
		// the executable after 30 s of bulk, mostly the function tables
		// the collector and stack growth read) are unmapped only once
		// traffic has stayed quiet for 20 s: a process busy every few
		// seconds keeps them, and one that went idle gets them back with
		// minor faults when traffic returns.
		s := rt.Stats()
		trimmer := memtrim.New(func() uint64 {
			return uint64(s.Up.Load()+s.Down.Load()) + uint64(s.TCPTotal.Load()+s.UDPTotal.Load())<<12
		}, memtrim.Options{CodeAfter: 20 * time.Second, Release: func() {
			// The device writers' and readers' batch buffers a burst
			// wrote.
			for _, st := range []*stack.Stack{tr.stack(), wgr.stack()} {
				if st != nil {
					st.ReleaseBuffers()
				}
			}
		}})
		tctx, stopTrim := context.WithCancel(ctx)
		trimDone := make(chan struct{})
		go func() { trimmer.Run(tctx); close(trimDone) }()
		defer func() { stopTrim(); <-trimDone }()
	}

	start := time.Now()
	var tick <-chan time.Time
	if cfg.SummaryInterval > 0 {
		t := time.NewTicker(cfg.SummaryInterval)
		defer t.Stop()
		tick = t.C
	}
	peers := func() string { return wgr.peerSummary() }
	summary := func(msg string) {
		s := rt.Stats()
		attrs := []any{"tcp_open", s.TCPOpen.Load(), "udp_open", s.UDPOpen.Load(),
			"tcp_total", s.TCPTotal.Load(), "udp_total", s.UDPTotal.Load(),
			"rejected", s.Rejected.Load(), "failed", s.Failed.Load(), "sniffed", s.Sniffed.Load(),
			"up", s.Up.Load(), "down", s.Down.Load()}
		// The stacks' counters, the TUN's and the WireGuard peers' together.
		var ss stack.Stats
		for _, st := range []*stack.Stack{tr.stack(), wgr.stack()} {
			if st != nil {
				ss = addStackStats(ss, st.Stats())
			}
		}
		attrs = append(attrs, "tx_drops", ss.TxDrops, "udp_drops", ss.UDPDrops, "rx_errors", ss.RxErrors, "tx_errors", ss.TxErrors)
		if wgr != nil {
			attrs = append(attrs, "wg_peers", peers())
		}
		log.Info(msg, append(attrs, "uptime", time.Since(start).Round(time.Second))...)
		// What the abuse limits did, only once they did something: a
		// quiet line on a quiet host.
		var limits []any
		for _, c := range []struct {
			name string
			n    uint64
		}{{"tcp_shed", ss.TCPShed}, {"tcp_handshake_timeouts", ss.TCPHandshakeTimeouts}, {"udp_evicted", ss.UDPEvicted},
			{"udp_rate_limited", ss.UDPRateLimited}, {"bad_checksums", ss.BadChecksums}, {"rx_drops", ss.RxDrops}, {"rx_lost", ss.RxLost},
			{"memory_refused", uint64(s.Refused.Load())}, {"memory_shed", uint64(s.Shed.Load())}} {
			if c.n > 0 {
				limits = append(limits, c.name, c.n)
			}
		}
		if len(limits) > 0 {
			log.Info(msg+": limits", limits...)
		}
	}
	var tunFailed, wgFailed <-chan struct{}
	var reload <-chan time.Time
	if tr != nil {
		tunFailed = tr.st.Failed()
	}
	if wgr != nil {
		wgFailed = wgr.st.Failed()
		t := time.NewTicker(wgReloadInterval)
		defer t.Stop()
		reload = t.C
	}
	var failed error
	for done := false; !done; {
		select {
		case <-tick:
			summary("summary")
		case <-hup:
			rs.reload("") // it logs the outcome
		case <-reload:
			wgr.reload(log)
		case <-ctx.Done():
			done = true
		case <-tunFailed:
			// The TUN went away under us (deleted, or its descriptor
			// closed): nothing can flow any more, so say so and exit
			// non-zero instead of sitting there.
			failed = fmt.Errorf("TUN device %s stopped working: %w", tr.dev.Name(), tr.st.Err())
			done = true
		case <-wgFailed:
			failed = fmt.Errorf("WireGuard inbound stopped working: %w", wgr.st.Err())
			done = true
		}
	}
	if wgr != nil {
		// The peers' counters go with the device: read them first.
		final := wgr.peerSummary()
		peers = func() string { return final }
	}
	stopServing()
	servers.Wait()
	var errs []error
	if tr != nil {
		errs = append(errs, tr.st.Close())
	}
	if wgr != nil {
		errs = append(errs, wgr.st.Close())
	}
	summary("final summary")
	return errors.Join(failed, errors.Join(errs...))
}

// addStackStats adds the counters the summary shows.
func addStackStats(a, b stack.Stats) stack.Stats {
	a.TxDrops += b.TxDrops
	a.UDPDrops += b.UDPDrops
	a.RxErrors += b.RxErrors
	a.TxErrors += b.TxErrors
	a.TCPShed += b.TCPShed
	a.TCPHandshakeTimeouts += b.TCPHandshakeTimeouts
	a.UDPEvicted += b.UDPEvicted
	a.UDPRateLimited += b.UDPRateLimited
	a.BadChecksums += b.BadChecksums
	a.RxDrops += b.RxDrops
	a.RxLost += b.RxLost
	return a
}

// stack is the TUN's stack; nil without a TUN.
func (t *tunRun) stack() *stack.Stack {
	if t == nil {
		return nil
	}
	return t.st
}

// tunRun is the TUN inbound: the device, its capture and its stack.
type tunRun struct {
	dev     *tun.Device
	st      *stack.Stack
	closers []func()
}

func (t *tunRun) close() {
	_ = t.st.Close()
	t.dev.Close()
	for _, c := range t.closers {
		c()
	}
}

// startTUN opens the TUN device and starts its stack, whose flows the
// router gets tagged as the TUN's.
func startTUN(ctx context.Context, cfg *config.Config, w *wiring, rt *router.Router, tcp stack.TCPOptions, hooks pipelineHooks, log *slog.Logger) (_ *tunRun, err error) {
	tr := &tunRun{}
	open := func() error {
		var err error
		tr.dev, err = tun.Open(ctx, tun.Config{Name: cfg.Tun.Name, FD: cfg.Tun.FD, Addrs: cfg.Tun.Addrs, MTU: cfg.Tun.MTU, Offload: cfg.Tun.Offload, Logger: log})
		return err
	}
	if hooks.device != nil {
		open = func() error {
			var err error
			tr.dev, err = hooks.device(ctx, w)
			return err
		}
	}
	if err := hooks.inTunNetns(open); err != nil {
		if hooks.device == nil && errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("%w (creating a TUN device needs root or CAP_NET_ADMIN)", err)
		}
		return nil, err
	}
	defer func() {
		if err != nil {
			tr.dev.Close()
			for _, c := range tr.closers {
				c()
			}
		}
	}()

	in := router.Inbound{Type: rules.InTUN, Name: tr.dev.Name()}
	if gw := cfg.Route.Gateway; gw != "" {
		// The TUN carries the host's own flows and those its gateway
		// devices forward: tag the latter IN-TYPE gateway, IN-NAME gw.
		forwarded := hostnet.ForwardedFrom(gw)
		in.Classify = func(src netip.Addr) (string, string) {
			if forwarded(src) {
				return rules.InGateway, gw
			}
			return "", ""
		}
	}
	if hooks.inbound != nil {
		in = *hooks.inbound
	}
	tunIn := rt.Handler(in)
	scfg := stack.Config{Device: tr.dev, MTU: cfg.Tun.MTU, Handler: tunIn, Logger: log, TCP: tcp}
	udpLimits(&scfg, cfg.Limits)
	if cfg.Tun.Pcap != "" {
		p, closePcap, err := createPcap(cfg.Tun.Pcap, log)
		if err != nil {
			return nil, err
		}
		tr.closers = append(tr.closers, closePcap)
		// The stack records the app's packets, without system TCP's
		// translated leg.
		scfg.Tap = p
	}
	if cfg.TCP.Stack == "system" {
		// The kernel listener must live where the TUN delivers packets.
		listen := func(network, address string) (ln net.Listener, err error) {
			err = hooks.inTunNetns(func() error {
				ln, err = stack.ListenSystemTCP(ctx, network, address)
				return err
			})
			return ln, err
		}
		scfg.SystemTCP = &stack.SystemTCP{Addrs: cfg.Tun.Addrs, Listen: listen}
	}
	if tr.st, err = stack.New(ctx, scfg); err != nil {
		return nil, err
	}
	return tr, nil
}

// createPcap creates a pcap file; the returned func flushes and closes it.
func createPcap(path string, log *slog.Logger) (*tun.Pcap, func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, nil, fmt.Errorf("pcap: %w", err)
	}
	p, err := tun.NewPcap(f, 0)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("pcap: %w", err)
	}
	return p, func() {
		if err := p.Close(); err != nil {
			log.Warn("pcap not fully written", "file", path, "err", err)
		}
		f.Close()
	}, nil
}

// startTrace records a Go execution trace until the returned stop is
// called: where goroutines wait between a packet's arrival and its relay.
func startTrace(path string) (stop func(), err error) {
	return startRecording("--trace", path, trace.Start, trace.Stop)
}

// startCPUProfile profiles until the returned stop is called.
func startCPUProfile(path string) (stop func(), err error) {
	return startRecording("--cpuprofile", path, pprof.StartCPUProfile, pprof.StopCPUProfile)
}

// startRecording creates path and starts a runtime recorder writing to it.
func startRecording(flag, path string, start func(io.Writer) error, end func()) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, usagef("%s: %v", flag, err)
	}
	if err := start(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	return func() {
		end()
		f.Close()
	}, nil
}

// tcpStackName is the TCP stack in use, for the startup line and the
// API's settings. With the system stack asked for, a family whose
// self-test failed is named with gVisor, which terminates its TCP.
func tcpStackName(cfg *config.Config, st interface{ SystemTCPFamilies() (v4, v6 bool) }) string {
	if cfg.TCP.Stack != "system" {
		return "gvisor"
	}
	on4, on6 := st.SystemTCPFamilies()
	var has4, has6 bool
	for _, p := range cfg.Tun.Addrs {
		if p.Addr().Unmap().Is4() {
			has4 = true
		} else {
			has6 = true
		}
	}
	switch {
	case !on4 && !on6:
		return "gvisor (system TCP unavailable)"
	case has4 && !on4:
		return "system for IPv6, gvisor for IPv4 (system TCP unavailable for IPv4)"
	case has6 && !on6:
		return "system for IPv4, gvisor for IPv6 (system TCP unavailable for IPv6)"
	}
	return "system"
}

// memoryName is a memory ceiling for the startup line.
func memoryName(n int64) string {
	switch {
	case n == 0:
		return "none"
	case n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	}
	return fmt.Sprintf("%dMiB", n>>20)
}

// udpLimits puts the UDP flow limits of the config into a stack's config
// (0 leaves the netstack's default).
func udpLimits(scfg *stack.Config, l config.LimitsConfig) {
	scfg.MaxUDPFlows, scfg.MaxUDPFlowsPerSource = l.UDPMaxFlows, l.UDPMaxFlowsPerSource
	scfg.NewUDPFlowRate, scfg.NewUDPFlowRatePerSource = l.UDPFlowRate, l.UDPFlowRatePerSource
}
