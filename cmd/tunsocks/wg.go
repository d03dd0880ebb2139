package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tunsocks/tunsocks/config"
	"github.com/tunsocks/tunsocks/internal/direct"
	"github.com/tunsocks/tunsocks/outbound"
	"github.com/tunsocks/tunsocks/router"
	"github.com/tunsocks/tunsocks/rules"
	"github.com/tunsocks/tunsocks/stack"
	"github.com/tunsocks/tunsocks/tun"
	"github.com/tunsocks/tunsocks/wg"
)

// wgReloadInterval is how often a running WireGuard inbound looks at its
// state file, so 'tunsocks wg remove-peer' takes effect at once.
const wgReloadInterval = 2 * time.Second

// runOnlyFlags are run's flags that mean nothing without a TUN.
var runOnlyFlags = map[string]bool{"tun": true, "tun-fd": true, "tun-addr": true, "offload": true, "tcp-stack": true, "mtu": true, "pcap": true}

func wgFlags() []cli.Flag {
	env := func(name string) []string {
		return []string{"TUNSOCKS_WG_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))}
	}
	d := config.DefaultWireGuard()
	flags := []cli.Flag{
		&cli.StringFlag{Name: "listen", Value: fmt.Sprintf(":%d", d.Listen.Port()), Usage: "UDP address for WireGuard, [ADDRESS]:PORT; an address here is also what phones are told", EnvVars: env("listen")},
		&cli.StringSliceFlag{Name: "peer", Usage: "a peer (phone) by name, added to the state file when missing; its config is printed (default: every peer's; a first peer 'phone' when there is none) (repeatable)", EnvVars: env("peer")},
		&cli.StringFlag{Name: "endpoint", Usage: "HOST:PORT phones reach this host at (default: the default route's source address, else each global address)", EnvVars: env("endpoint")},
		&cli.StringFlag{Name: "state", Usage: "the file of keys and peers (default: the user's config directory, tunsocks/wg.json)", EnvVars: env("state")},
		&cli.StringFlag{Name: "qr-png", Usage: "write each peer's config as DIR/NAME.conf and its QR code as DIR/NAME.png", EnvVars: env("qr-png")},
		&cli.BoolFlag{Name: "qr", Value: d.QR, Usage: "print each config's QR code in the terminal", EnvVars: env("qr")},
		&cli.StringSliceFlag{Name: "range", Usage: "tunnel addresses: an IPv4 and/or an IPv6 prefix (default, on first use: 10.7.0.0/24 and fd07::/64)", EnvVars: env("range")},
		&cli.IntFlag{Name: "mtu", Value: d.MTU, Usage: "MTU of the tunnel (1280..65535); the phones' configs carry it", EnvVars: env("mtu")},
		&cli.BoolFlag{Name: "block-quic", Value: d.BlockQUIC, Usage: "answer UDP to port 443 (QUIC) with port unreachable, so apps fall back to TCP, which the proxy sees", EnvVars: env("block-quic")},
		&cli.BoolFlag{Name: "block-dot", Value: d.BlockDoT, Usage: "reset TCP to port 853 (DNS over TLS), so Android's Private DNS falls back to plain DNS", EnvVars: env("block-dot")},
		&cli.StringFlag{Name: "pcap", Usage: "write every peer's packets to this pcap file", EnvVars: env("pcap")},
		&cli.StringFlag{Name: "pcap-peers", Usage: "write each peer's packets to DIR/NAME.pcap", EnvVars: env("pcap-peers")},
	}
	for _, f := range runFlags() {
		if !runOnlyFlags[f.Names()[0]] {
			flags = append(flags, f)
		}
	}
	return flags
}

func wgCommand() *cli.Command {
	return &cli.Command{
		Name:      "wg",
		Usage:     "let phones join over WireGuard by scanning a QR code, and carry their traffic by rules to an upstream (Burp, Charles, mitmproxy); no TUN, no root",
		UsageText: "tunsocks wg --proxy URL [--config FILE] [--listen ADDR:PORT] [--peer NAME]... [--endpoint HOST:PORT] [--state FILE] [--qr-png DIR] [run's rule, DNS and pcap flags]",
		Description: "Runs a WireGuard server in userspace. Each peer's wg-quick config is printed with its QR code;\n" +
			"the WireGuard app on the phone imports it ('scan from QR code'). DNS from the phone is answered\n" +
			"with fake IPs, so a CONNECT to the upstream carries the host name. Keys and peers are kept in\n" +
			"the state file; 'tunsocks wg remove-peer NAME' cuts a peer off, also while this runs.",
		Flags: wgFlags(),
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usagef("wg: unexpected argument %q; peers are given with --peer NAME (or did you mean 'tunsocks wg remove-peer'?)", c.Args().First())
			}
			log, err := newLogger(c)
			if err != nil {
				return err
			}
			cfg, err := loadWGConfig(c)
			if err != nil {
				return err
			}
			return runPipeline(c.Context, cfg, log, pipelineHooks{noTUN: true, stdout: c.App.Writer})
		},
		Subcommands: []*cli.Command{wgRemovePeerCommand()},
	}
}

// loadWGConfig is loadRunConfig plus the wireguard: section from the flags.
func loadWGConfig(c *cli.Context) (*config.Config, error) {
	return loadConfigWith(c, func(cfg *config.Config) error {
		if err := runFlagsOverride(c, cfg); err != nil {
			return err
		}
		if cfg.WireGuard == nil {
			cfg.WireGuard = config.DefaultWireGuard()
		}
		return applyWGFlags(c, cfg.WireGuard)
	})
}

func applyWGFlags(c *cli.Context, w *config.WireGuardConfig) error {
	set := c.IsSet
	if set("listen") {
		ap, err := config.ParseWGListen(c.String("listen"))
		if err != nil {
			return usagef("--listen %v", err)
		}
		w.Listen = ap
	}
	if set("peer") {
		w.Peers = nil
		for _, p := range c.StringSlice("peer") {
			if err := wg.CheckPeerName(p); err != nil {
				return usagef("--peer: %v", strings.TrimPrefix(err.Error(), "wg: "))
			}
			w.Peers = append(w.Peers, p)
		}
	}
	if set("endpoint") {
		if err := config.CheckWGEndpoint(c.String("endpoint")); err != nil {
			return usagef("--endpoint %v", err)
		}
		w.Endpoint = c.String("endpoint")
	}
	for name, dst := range map[string]*string{"state": &w.State, "qr-png": &w.QRPNG, "pcap": &w.Pcap, "pcap-peers": &w.PcapPeers} {
		if set(name) {
			*dst = c.String(name)
		}
	}
	for name, dst := range map[string]*bool{"qr": &w.QR, "block-quic": &w.BlockQUIC, "block-dot": &w.BlockDoT} {
		if set(name) {
			*dst = c.Bool(name)
		}
	}
	if set("range") {
		for _, r := range c.StringSlice("range") {
			if err := w.SetWGRange(r); err != nil {
				return usagef("--range %v", err)
			}
		}
	}
	if set("mtu") {
		if m := c.Int("mtu"); m < 1280 || m > 65535 {
			return usagef("--mtu %d: want 1280..65535 (IPv6 inside the tunnel needs 1280)", m)
		}
		w.MTU = c.Int("mtu")
	}
	return nil
}

func wgRemovePeerCommand() *cli.Command {
	return &cli.Command{
		Name:      "remove-peer",
		Usage:     "remove peers from the state file; a running 'tunsocks wg' cuts them off within seconds",
		UsageText: "tunsocks wg remove-peer [--state FILE] NAME...",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "state", Usage: "the file of keys and peers (default: the user's config directory, tunsocks/wg.json)", EnvVars: []string{"TUNSOCKS_WG_STATE"}},
		},
		Action: func(c *cli.Context) error {
			if !c.Args().Present() {
				return usagef("remove-peer: name the peers to remove")
			}
			path := c.String("state")
			if path == "" {
				var err error
				if path, err = wg.DefaultStatePath(); err != nil {
					return usageError{err}
				}
			}
			st, err := wg.LoadState(path)
			if err != nil {
				return usageError{err}
			}
			for _, name := range c.Args().Slice() {
				if err := st.RemovePeer(name); err != nil {
					return usageError{err}
				}
			}
			if err := st.Save(); err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "removed %s from %s\n", strings.Join(c.Args().Slice(), ", "), path)
			return nil
		},
	}
}

// wgState is the state file as a run starts, with the peers whose
// configs to print.
type wgState struct {
	state *wg.State
	show  []wg.Peer
}

// openWGState loads (or creates) the state file, applies the ranges, adds
// the peers that are missing (a first peer "phone" when there are none at
// all) and saves it when anything changed.
func openWGState(ws *config.WireGuardConfig, log *slog.Logger) (*wgState, error) {
	path := ws.State
	if path == "" {
		var err error
		if path, err = wg.DefaultStatePath(); err != nil {
			return nil, usageError{err}
		}
	}
	st, created, err := wg.OpenState(path)
	if err != nil {
		return nil, usageError{err}
	}
	changed := created
	r4, r6 := st.Range4, st.Range6
	if ws.Range4.IsValid() {
		r4 = ws.Range4
	}
	if ws.Range6.IsValid() {
		r6 = ws.Range6
	}
	if r4 != st.Range4 || r6 != st.Range6 {
		moved, err := st.SetRanges(r4, r6)
		if err != nil {
			return nil, usageError{err}
		}
		for _, name := range moved {
			log.Warn("WireGuard peer readdressed for the new tunnel range; scan its new QR code", "peer", name)
		}
		changed = true
	}
	names := ws.Peers
	if len(names) == 0 && len(st.Peers) == 0 {
		names = []string{"phone"}
	}
	var show []wg.Peer
	for _, n := range names {
		p, added, err := st.AddPeer(n)
		if err != nil {
			return nil, usageError{err}
		}
		if added {
			log.Info("new WireGuard peer", "peer", p.Name, "v4", p.Addr4, "v6", p.Addr6)
			changed = true
		}
		show = append(show, p)
	}
	if len(ws.Peers) == 0 {
		show = st.Peers
	}
	if changed {
		if err := st.Save(); err != nil {
			return nil, err
		}
		if created {
			log.Info("WireGuard keys and peers are kept in a new state file", "file", st.Path())
		}
	}
	return &wgState{state: st, show: show}, nil
}

// wireGuardPolicy makes the router ready for WireGuard peers: their DNS
// server (the server's tunnel addresses) answers with fake IPs, and the
// built-in rules for debugging proxies come before the policy's.
func (w *wiring) wireGuardPolicy(rc router.Config, ws *config.WireGuardConfig, st *wg.State) router.Config {
	if w.hook != nil {
		a4, a6 := st.ServerAddrs()
		w.hook.Also(a4, a6)
	}
	rc.Decide = wgDecider{blockQUIC: ws.BlockQUIC, blockDoT: ws.BlockDoT}.wrap(rc.Decide)
	return rc
}

// Built-in rules for WireGuard peers, matched before the user's.
const (
	wgRuleQUIC = "AND,((IN-TYPE,wireguard),(NETWORK,udp),(DST-PORT,443)),REJECT"
	wgRuleDoT  = "AND,((IN-TYPE,wireguard),(NETWORK,tcp),(DST-PORT,853)),REJECT"
)

// wgDecider holds the built-in rules for WireGuard peers.
type wgDecider struct{ blockQUIC, blockDoT bool }

// wrap returns a Decider that applies the built-in rules to peers' flows
// before next, and turns a peer's UDP decision for an outbound that cannot
// carry UDP (an HTTP proxy) into a rejection, so the app gets port
// unreachable at once and the flow counts as rejected.
func (p wgDecider) wrap(next router.Decider) router.Decider {
	return func(m *rules.Metadata) router.Decision {
		if m.InType != rules.InWireGuard {
			return next(m)
		}
		switch {
		case p.blockQUIC && m.Network == "udp" && m.Dst.Port() == 443:
			return router.Decision{Action: router.Reject, Rule: `REJECT by built-in rule "` + wgRuleQUIC + `" (wireguard block-quic: QUIC falls back to TCP, which the proxy sees)`}
		case p.blockDoT && m.Network == "tcp" && m.Dst.Port() == 853:
			return router.Decision{Action: router.Reject, Rule: `REJECT by built-in rule "` + wgRuleDoT + `" (wireguard block-dot: DNS over TLS falls back to plain DNS, which gets fake IPs)`}
		}
		d := next(m)
		if m.Network == "udp" && d.Action == router.Proxy {
			if h, ok := d.Outbound.(*outbound.HTTP); ok {
				return router.Decision{Action: router.Reject, Rule: d.Rule + "; rejected: " + h.Name() + " is an HTTP proxy and carries no UDP"}
			}
		}
		return d
	}
}

// wgRun is the WireGuard inbound with its stack.
type wgRun struct {
	in      *wg.Inbound
	st      *stack.Stack
	path    string
	stamp   fileStamp
	server  wg.Key
	closers []func()

	all     *tun.Pcap // --pcap: every peer's packets
	pcapDir string
	mu      sync.Mutex
	pcaps   map[string]*tun.Pcap // per peer name, with pcapDir
	byAddr  func(netip.Addr) string
	log     *slog.Logger
}

type fileStamp struct {
	mod  time.Time
	size int64
}

func stampOf(path string) fileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}
	}
	return fileStamp{fi.ModTime(), fi.Size()}
}

// startWireGuard starts the WireGuard server on the direct dialer's
// sockets and its stack, whose flows the router gets tagged with the peer,
// prints the peers' configs and checks the host firewall.
func startWireGuard(ctx context.Context, cfg *config.Config, ws *wgState, rt *router.Router, d *direct.Dialer, tcp stack.TCPOptions, out io.Writer, log *slog.Logger) (_ *wgRun, err error) {
	wc := cfg.WireGuard
	st := ws.state
	in, err := wg.Start(ctx, wg.Config{Listen: wc.Listen, ListenPacket: d.ListenPacket, PrivateKey: st.Server, Peers: st.Peers, MTU: wc.MTU, Logger: log})
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("%w: another WireGuard (or tunsocks wg) uses UDP port %d; choose another with --listen :PORT", err, wc.Listen.Port())
		}
		return nil, err
	}
	r := &wgRun{in: in, path: st.Path(), stamp: stampOf(st.Path()), server: st.Server, log: log, byAddr: in.PeerName}
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	scfg := stack.Config{Device: in.Device(), MTU: wc.MTU, Logger: log, TCP: tcp,
		Handler: rt.Handler(router.Inbound{Type: rules.InWireGuard, Name: "wg", User: in.PeerName})}
	udpLimits(&scfg, cfg.Limits)
	if wc.Pcap != "" {
		p, closePcap, err := createPcap(wc.Pcap, log)
		if err != nil {
			return nil, err
		}
		r.closers = append(r.closers, closePcap)
		r.all = p
	}
	if wc.PcapPeers != "" {
		if err := os.MkdirAll(wc.PcapPeers, 0o700); err != nil {
			return nil, fmt.Errorf("pcap-peers: %w", err)
		}
		r.pcapDir, r.pcaps = wc.PcapPeers, map[string]*tun.Pcap{}
		for _, p := range st.Peers {
			if err := r.openPeerPcap(p.Name); err != nil {
				return nil, err
			}
		}
	}
	if r.all != nil || r.pcaps != nil {
		scfg.Tap = r
	}
	if r.st, err = stack.New(ctx, scfg); err != nil {
		return nil, err
	}
	names := make([]string, len(st.Peers))
	for i, p := range st.Peers {
		names[i] = p.Name
	}
	log.Info("WireGuard inbound listening", "udp", in.LocalAddrs(), "peers", names, "state", st.Path(), "mtu", wc.MTU,
		"block-quic", wc.BlockQUIC, "block-dot", wc.BlockDoT)
	eps, err := wgEndpoints(wc, in.Port(), cfg.Fwmark)
	if err != nil {
		return nil, err
	}
	if err := printWGConfigs(out, st, ws.show, eps, wc, log); err != nil {
		return nil, err
	}
	warnFirewall(in.Port(), log)
	return r, nil
}

func (r *wgRun) openPeerPcap(name string) error {
	path := filepath.Join(r.pcapDir, name+".pcap")
	p, closePcap, err := createPcap(path, r.log)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.pcaps[name] = p
	r.mu.Unlock()
	r.closers = append(r.closers, closePcap)
	return nil
}

// WritePacket is the stack's tap: every packet goes to the pcap of all
// peers and to the pcap of the peer it belongs to (its source when it
// comes from the tunnel, its destination when it goes back).
func (r *wgRun) WritePacket(t time.Time, pkt []byte) error {
	if r.all != nil {
		_ = r.all.WritePacket(t, pkt)
	}
	if r.pcaps == nil {
		return nil
	}
	src, dst, ok := ipAddrs(pkt)
	if !ok {
		return nil
	}
	name := r.byAddr(src)
	if name == "" {
		name = r.byAddr(dst)
	}
	r.mu.Lock()
	p := r.pcaps[name]
	r.mu.Unlock()
	if p != nil {
		_ = p.WritePacket(t, pkt)
	}
	return nil
}

// ipAddrs reads the addresses of a raw IPv4 or IPv6 packet.
func ipAddrs(pkt []byte) (src, dst netip.Addr, ok bool) {
	if len(pkt) < 20 {
		return
	}
	switch pkt[0] >> 4 {
	case 4:
		return netip.AddrFrom4([4]byte(pkt[12:16])), netip.AddrFrom4([4]byte(pkt[16:20])), true
	case 6:
		if len(pkt) < 40 {
			return
		}
		return netip.AddrFrom16([16]byte(pkt[8:24])), netip.AddrFrom16([16]byte(pkt[24:40])), true
	}
	return
}

// reload applies the state file's peers when the file changed.
func (r *wgRun) reload(log *slog.Logger) {
	stamp := stampOf(r.path)
	if stamp == r.stamp {
		return
	}
	r.stamp = stamp
	st, err := wg.LoadState(r.path)
	if err != nil {
		log.Warn("WireGuard state file changed but cannot be read; peers unchanged", "err", err)
		return
	}
	if st.Server != r.server {
		log.Warn("WireGuard state file has another server key; restart tunsocks to use it (peers unchanged)", "file", r.path)
		return
	}
	var added, removed []string
	old := r.in.Peers()
	for _, p := range st.Peers {
		if !slices.ContainsFunc(old, func(o wg.Peer) bool { return o.Public == p.Public }) {
			added = append(added, p.Name)
		}
	}
	for _, o := range old {
		if !slices.ContainsFunc(st.Peers, func(p wg.Peer) bool { return o.Public == p.Public }) {
			removed = append(removed, o.Name)
		}
	}
	if err := r.in.SetPeers(st.Peers); err != nil {
		log.Warn("WireGuard peers not updated", "err", err)
		return
	}
	if r.pcapDir != "" {
		for _, name := range added {
			r.mu.Lock()
			_, open := r.pcaps[name]
			r.mu.Unlock()
			if !open {
				if err := r.openPeerPcap(name); err != nil {
					log.Warn("no pcap for the new peer", "peer", name, "err", err)
				}
			}
		}
	}
	log.Info("WireGuard peers updated from the state file", "added", added, "removed", removed)
}

// peerSummary is each peer's handshake age and bytes, for the summary line.
func (r *wgRun) peerSummary() string {
	sts, err := r.in.Status()
	if err != nil {
		return err.Error()
	}
	parts := make([]string, 0, len(sts))
	for _, s := range sts {
		if s.LastHandshake.IsZero() {
			parts = append(parts, s.Name+": no handshake yet")
			continue
		}
		parts = append(parts, fmt.Sprintf("%s: handshake %ds ago, rx %d B, tx %d B", s.Name,
			int(time.Since(s.LastHandshake).Round(time.Second)/time.Second), s.RxBytes, s.TxBytes))
	}
	to, from := r.in.PipeStats()
	if to.Drops+from.Drops+to.Oversize > 0 {
		parts = append(parts, fmt.Sprintf("pipe drops in %d out %d, oversize %d", to.Drops, from.Drops, to.Oversize))
	}
	return strings.Join(parts, "; ")
}

// stack is the peers' stack; nil without WireGuard.
func (r *wgRun) stack() *stack.Stack {
	if r == nil {
		return nil
	}
	return r.st
}

func (r *wgRun) close() {
	if r.st != nil {
		_ = r.st.Close()
	}
	_ = r.in.Close()
	for _, c := range r.closers {
		c()
	}
}

// wgEndpoint is one address phones may be told.
type wgEndpoint struct {
	hostPort string
	label    string // where it came from, for the heading
	suffix   string // file-name suffix for a second and further candidate
}

// wgEndpoints decides the Endpoint line: --endpoint, else the listen
// address when it is a specific one, else the host's candidates.
func wgEndpoints(wc *config.WireGuardConfig, port uint16, mark uint32) ([]wgEndpoint, error) {
	if wc.Endpoint != "" {
		return []wgEndpoint{{hostPort: wc.Endpoint, label: "as given"}}, nil
	}
	if a := wc.Listen.Addr(); a.IsValid() && !a.IsUnspecified() {
		return []wgEndpoint{{hostPort: netip.AddrPortFrom(a, port).String(), label: "the listen address"}}, nil
	}
	cands, err := wg.Endpoints(mark)
	if err != nil {
		return nil, err
	}
	if len(cands) == 0 {
		return nil, usagef("found no address of this host that a phone could reach (only loopback, link-local or container bridges); give --endpoint HOST:PORT")
	}
	var out []wgEndpoint
	for i, c := range cands {
		e := wgEndpoint{hostPort: netip.AddrPortFrom(c.Addr, port).String()}
		if c.Default {
			e.label = "the default route's source address, on " + c.Interface
		} else {
			e.label = fmt.Sprintf("address %d of %d, on %s", i+1, len(cands), c.Interface)
		}
		if i > 0 {
			e.suffix = "-" + c.Interface + "-" + strings.NewReplacer(":", "_", ".", "_").Replace(c.Addr.String())
		}
		out = append(out, e)
	}
	return out, nil
}

// printWGConfigs writes, for each peer and endpoint, a heading, the
// wg-quick text and its QR code, and with qr-png the files.
func printWGConfigs(w io.Writer, st *wg.State, peers []wg.Peer, eps []wgEndpoint, wc *config.WireGuardConfig, log *slog.Logger) error {
	if w == nil {
		w = io.Discard
	}
	for _, p := range peers {
		for _, ep := range eps {
			c := st.ClientConfig(p, ep.hostPort, wc.MTU)
			text := c.String()
			head := fmt.Sprintf("WireGuard peer %q, endpoint %s (%s)", p.Name, ep.hostPort, ep.label)
			if len(eps) > 1 {
				head += "; this host has several addresses: scan the one on the phone's network"
			}
			fmt.Fprintf(w, "\n# %s\n%s", head, text)
			if wc.QR {
				qr, err := wg.QRText(text)
				if err != nil {
					return err
				}
				fmt.Fprintf(w, "\n%s", qr)
			}
			if wc.QRPNG != "" {
				conf, png, err := wg.WriteClientFiles(wc.QRPNG, p.Name+ep.suffix, c)
				if err != nil {
					return err
				}
				log.Info("WireGuard client config written", "peer", p.Name, "endpoint", ep.hostPort, "png", png, "conf", conf)
			}
		}
	}
	return nil
}

// warnFirewall says when the host firewall would drop the phones' packets.
func warnFirewall(port uint16, log *slog.Logger) {
	drops, err := wg.CheckFirewall(port)
	if errors.Is(err, wg.ErrFirewallUnreadable) {
		log.Info("host firewall not checked; if phones cannot connect, let UDP in on the WireGuard port", "port", port, "why", err)
		return
	}
	if err != nil {
		log.Warn("host firewall not checked", "err", err)
		return
	}
	for _, d := range drops {
		log.Warn("the host firewall drops the phones' WireGuard packets; let them in with the command in fix", "chain", d.Chain, "why", d.Why, "fix", d.Fix)
	}
}
