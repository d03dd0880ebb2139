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
	"runtime/pprof"
	"runtime/trace"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tunsocks/tunsocks/config"
	"github.com/tunsocks/tunsocks/internal/direct"
	"github.com/tunsocks/tunsocks/internal/memtrim"
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
		&cli.StringFlag{Name: "tcp-cc", Value: d.TCP.CC, Usage: "netstack congestion control: cubic or reno", EnvVars: env("tcp-cc")},
		&cli.StringFlag{Name: "tcp-stack", Value: d.TCP.Stack, Usage: "who terminates the app's TCP: gvisor (userspace netstack) or system (the host kernel, through address translation on the TUN; cheaper per connection)", EnvVars: env("tcp-stack")},
		&cli.BoolFlag{Name: "dns", Usage: "answer DNS on the TUN with fake IPs (default: on when a rule needs a domain)", EnvVars: env("dns")},
		&cli.BoolFlag{Name: "dns-hijack", Usage: "answer every DNS query to port 53, whatever its address", EnvVars: env("dns-hijack")},
		&cli.StringFlag{Name: "cpuprofile", Hidden: true, Usage: "write a Go CPU profile of the whole run to this file (for scripts/bench.sh -run-args)"},
		&cli.BoolFlag{Name: "memtrim", Value: true, Hidden: true, Usage: "give free heap back to the system after a burst, once traffic is quiet (false to measure without)"},
		&cli.StringFlag{Name: "pprof", Hidden: true, Usage: "serve runtime profiles on this loopback address (GET /debug/pprof/heap?gc=1; for scripts/bench.sh -heap-profiles)"},
		&cli.StringFlag{Name: "trace", Hidden: true, Usage: "write a Go execution trace of the whole run to this file (for scripts/bench.sh -run-args; `go tool trace` reads it)"},
		&cli.StringSliceFlag{Name: "nameserver", Usage: "resolver for real answers: ip[:port], udp://, tcp:// (repeatable)", EnvVars: env("nameserver")},
	}, append(sniffFlags(env), routeFlags()...)...)
}

// loadRunConfig reads --config (or starts from the defaults), lets the flags
// the user set override it, and validates the result as a whole, once.
func loadRunConfig(c *cli.Context) (*config.Config, error) {
	return loadConfigWith(c, func(cfg *config.Config) error {
		if err := tunFlagsOverride(c, cfg); err != nil {
			return err
		}
		return runFlagsOverride(c, cfg)
	})
}

// loadConfigWith is loadRunConfig with the flags applied by flags.
func loadConfigWith(c *cli.Context, flags func(*config.Config) error) (*config.Config, error) {
	var cfg *config.Config
	var err error
	if path := c.String("config"); path != "" {
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
			"rule it created. After a crash: tunsocks cleanup.",
		Flags: runFlags(),
		Action: func(c *cli.Context) error {
			if c.Bool("print-example-config") {
				fmt.Fprint(c.App.Writer, config.Example())
				return nil
			}
			log, err := newLogger(c)
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
			return runPipeline(c.Context, cfg, log, pipelineHooks{stdout: c.App.Writer, stateDir: c.String("state-dir"), notice: c.App.ErrWriter,
				noTrim: !c.Bool("memtrim")})
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
	// stdout is where client configs and QR codes are printed.
	stdout io.Writer
	// stateDir is where host routing records what it installs; notice
	// receives the startup block saying what and how to undo it.
	stateDir string
	notice   io.Writer
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
	w, err := wire(cfg, d, log, wireOptions{dns: true, process: true})
	if err != nil {
		return err
	}
	defer w.close(log)
	rc := w.routerConfig()
	if wgs != nil {
		rc = w.wireGuardPolicy(rc, cfg.WireGuard, wgs.state)
	}
	rc.DialTimeout, rc.TCPIdle, rc.UDPIdle, rc.DNSIdle = cfg.DialTimeout, cfg.TCPIdle, cfg.UDPIdle, cfg.DNSIdle
	rc.Logger, rc.OnFlow = log, hooks.onFlow
	rc.Sniff = w.sniffConfig()
	rt, err := router.New(rc)
	if err != nil {
		return err
	}
	tcp := stack.TCPOptions{SendBuf: cfg.TCP.Buf, RecvBuf: cfg.TCP.Buf, CongestionControl: cfg.TCP.CC}
	if cfg.TCP.SACK != nil {
		tcp.DisableSACK = !*cfg.TCP.SACK
	}
	if cfg.TCP.ModerateRcvbuf != nil {
		tcp.DisableModerateReceiveBuffer = !*cfg.TCP.ModerateRcvbuf
	}

	var tr *tunRun
	if !hooks.noTUN {
		if tr, err = startTUN(ctx, cfg, rt, tcp, hooks, log); err != nil {
			return err
		}
		defer tr.close()
		log.Info("tunsocks running", "tun", tr.dev.Name(), "addrs", cfg.Tun.Addrs, "mtu", cfg.Tun.MTU, "tcp-stack", tcpStackName(cfg, tr.st), "outbound", w.policy.Summary(), "dns", w.dnsSummary(), "sniff", cfg.Sniff.Mode, "pcap", cfg.Tun.Pcap)
	}
	var wgr *wgRun
	if wgs != nil {
		if wgr, err = startWireGuard(ctx, cfg, wgs, rt, d, tcp, hooks.stdout, log); err != nil {
			return err
		}
		defer wgr.close()
		if hooks.noTUN {
			log.Info("tunsocks running", "wireguard", wgr.in.LocalAddrs(), "outbound", w.policy.Summary(), "dns", w.dnsSummary(), "sniff", cfg.Sniff.Mode)
		}
	}
	if hr != nil {
		// Removed (deferred) before the device is closed.
		defer func() { rerr = errors.Join(rerr, hr.close()) }()
		if err := hr.install(ctx, tr.dev.Name(), cfg.Tun.Addrs, w.dnsAddrs()); err != nil {
			return err
		}
	}
	if hooks.started != nil && tr != nil {
		hooks.started(tr.dev.Name())
	}
	if err := w.serveExtraDNS(ctx, log); err != nil {
		return err
	}

	if !hooks.noTrim {
		// After a burst (a bulk transfer, thousands of handshakes) the
		// runtime keeps the heap and the grown stacks; once traffic is
		// quiet they go back to the system. A new flow counts as 4 KiB
		// of activity.
		s := rt.Stats()
		tr := memtrim.New(func() uint64 {
			return uint64(s.Up.Load()+s.Down.Load()) + uint64(s.TCPTotal.Load()+s.UDPTotal.Load())<<12
		}, memtrim.Options{})
		tctx, stopTrim := context.WithCancel(ctx)
		trimDone := make(chan struct{})
		go func() { tr.Run(tctx); close(trimDone) }()
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
			{"udp_rate_limited", ss.UDPRateLimited}, {"bad_checksums", ss.BadChecksums}, {"rx_drops", ss.RxDrops}, {"rx_lost", ss.RxLost}} {
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
func startTUN(ctx context.Context, cfg *config.Config, rt *router.Router, tcp stack.TCPOptions, hooks pipelineHooks, log *slog.Logger) (_ *tunRun, err error) {
	tr := &tunRun{}
	open := func() error {
		var err error
		tr.dev, err = tun.Open(ctx, tun.Config{Name: cfg.Tun.Name, FD: cfg.Tun.FD, Addrs: cfg.Tun.Addrs, MTU: cfg.Tun.MTU, Offload: cfg.Tun.Offload, Logger: log})
		return err
	}
	if err := hooks.inTunNetns(open); err != nil {
		if errors.Is(err, os.ErrPermission) {
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

	tunIn := rt.Handler(router.Inbound{Type: rules.InTUN, Name: tr.dev.Name()})
	scfg := stack.Config{Device: tr.dev, MTU: cfg.Tun.MTU, Handler: tunIn, Logger: log, TCP: tcp}
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

// tcpStackName is the TCP stack in use, for the startup line.
func tcpStackName(cfg *config.Config, st *stack.Stack) string {
	switch {
	case st.SystemTCP():
		return "system"
	case cfg.TCP.Stack == "system":
		return "gvisor (system failed its self-test)"
	}
	return "gvisor"
}
