package hostnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Host is an installed run. Close gives the host back.
type Host struct {
	state *State
	path  string
	log   *slog.Logger

	healCancel context.CancelFunc
	healDone   chan struct{}
	resolved   *resolvedLink

	closeOnce sync.Once
	closeErr  error
}

// State returns what was installed.
func (h *Host) State() *State { return h.state }

// StatePath is the state file.
func (h *Host) StatePath() string { return h.path }

// Install removes the leftovers of a dead run, records everything cfg asks
// for in the state file and installs it. ctx bounds the self-healing that
// runs until Close. On error nothing stays installed.
func Install(ctx context.Context, cfg Config) (*Host, error) {
	log := cfg.logger()
	if err := CheckDNSConfig(cfg.DNSConfig); err != nil {
		return nil, err
	}
	if err := Recover(cfg); err != nil {
		return nil, err
	}
	opts := cfg.Options
	for _, p := range cfg.IncludeCgroupPaths {
		cg, err := resolveCgroup(p)
		if err != nil {
			return nil, err
		}
		opts.IncludeCgroups = append(opts.IncludeCgroups, cg)
	}
	if err := opts.Check(); err != nil {
		return nil, err
	}
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("hostnet: netlink: %w", err)
	}
	defer nl.Close()
	tunLink, err := nl.LinkByName(opts.Tun)
	if err != nil {
		return nil, fmt.Errorf("hostnet: TUN %s: %w", opts.Tun, err)
	}
	if opts.Gateway != "" {
		if _, err := nl.LinkByName(opts.Gateway); err != nil {
			return nil, fmt.Errorf("--gateway %s: no such interface here: %w", opts.Gateway, err)
		}
	}
	// A proxy served by a process of this host must reach out directly.
	if opts.AutoRoute {
		if err := excludeLocalUpstreams(nl, &opts, cfg.Upstreams, log); err != nil {
			return nil, err
		}
	}
	if opts.Gateway != "" {
		drops, err := forwardDropChains()
		if err != nil {
			return nil, err
		}
		opts.ForwardDrop = drops
		if legacyIptablesFilter() {
			log.Warn("legacy iptables has a filter table: tunsocks cannot see its FORWARD policy; if it is DROP (Docker sets that), allow the gateway with: " +
				fmt.Sprintf("iptables -I FORWARD -i %s -o %s -j ACCEPT; iptables -I FORWARD -i %s -o %s -j ACCEPT", opts.Gateway, opts.Tun, opts.Tun, opts.Gateway))
		}
	}

	self, err := procStartTime(os.Getpid())
	if err != nil {
		return nil, fmt.Errorf("hostnet: %w", err)
	}
	ns, initNs := netnsID("self"), netnsID("1")
	st := &State{Version: stateVersion, PID: os.Getpid(), StartTime: self, Netns: ns, Tun: opts.Tun,
		Rules: opts.Rules(), Routes: opts.Routes(), NftTable: opts.NftTable()}
	if len(opts.ForwardDrop) > 0 {
		st.Forward, st.FwdTag = opts.ForwardDrop, opts.ForwardTag()
	}
	sysctls, err := plannedSysctls(&opts)
	if err != nil {
		return nil, err
	}
	st.Sysctls = sysctls

	var rl *resolvedLink
	switch cfg.dnsConfig() {
	case DNSAuto, DNSResolved:
		rl, err = dialResolved(cfg.DBusAddress, cfg.dnsConfig() == DNSResolved, log)
		if err != nil {
			return nil, err
		}
		if rl != nil {
			st.ResolvedIfindex, st.ResolvedBus = tunLink.Attrs().Index, cfg.DBusAddress
		}
	}

	path := statePath(cfg.stateDir(), opts.Tun, ns, initNs)
	if err := writeState(path, st); err != nil {
		if rl != nil {
			rl.close()
		}
		return nil, err
	}
	h := &Host{state: st, path: path, log: log}
	if err := h.install(nl, &opts, tunLink, rl); err != nil {
		if rl != nil {
			rl.revert(int32(tunLink.Attrs().Index)) // best effort: some calls may have worked
			rl.close()
		}
		rerr := removeState(st, log)
		if rerr == nil {
			os.Remove(path)
		}
		return nil, errors.Join(err, rerr)
	}
	h.resolved = rl
	hctx, cancel := context.WithCancel(ctx)
	h.healCancel, h.healDone = cancel, make(chan struct{})
	go func() {
		defer close(h.healDone)
		heal(hctx, st, &opts, path, log)
	}()
	return h, nil
}

func (h *Host) install(nl *netlink.Handle, o *Options, tun netlink.Link, rl *resolvedLink) error {
	for _, s := range h.state.Sysctls {
		if err := writeSysctl(s.Path, s.New); err != nil {
			return err
		}
	}
	if err := installNft(o); err != nil {
		return err
	}
	for _, c := range h.state.Forward {
		if err := insertForwardAccept(c, o.Gateway, o.Tun, h.state.FwdTag); err != nil {
			return err
		}
	}
	for _, r := range h.state.Routes {
		if err := addRoute(nl, r, tun.Attrs().Index); err != nil {
			return err
		}
	}
	for _, r := range h.state.Rules {
		if err := addRule(nl, r); err != nil {
			return err
		}
	}
	if rl != nil {
		if err := rl.apply(int32(tun.Attrs().Index), o.DNS); err != nil {
			return err
		}
	}
	return nil
}

// Close removes everything Install installed and the state file. It is
// safe to call more than once.
func (h *Host) Close() error {
	h.closeOnce.Do(func() {
		if h.healCancel != nil {
			h.healCancel()
			<-h.healDone
		}
		var errs []error
		if h.resolved != nil {
			if link, err := netlink.LinkByIndex(h.state.ResolvedIfindex); err == nil && link.Attrs().Name == h.state.Tun {
				errs = append(errs, h.resolved.revert(int32(h.state.ResolvedIfindex)))
			}
			h.resolved.close()
		}
		if err := removeState(h.state, h.log); err != nil {
			errs = append(errs, err)
		} else if err := os.Remove(h.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		h.closeErr = errors.Join(errs...)
	})
	return h.closeErr
}

// Recover makes the ground clear for cfg's run: the leftovers of dead runs
// in this network namespace are removed (logged as "removed leftovers of
// crashed run, pid N"); a live run of the same TUN, or one using the same
// table or rule priorities, makes it fail. Install calls it; call it
// before creating the TUN to fail early.
func Recover(cfg Config) error {
	log := cfg.logger()
	states, err := statesHere(cfg.stateDir())
	if err != nil {
		return err
	}
	o := cfg.Options
	for _, f := range states {
		s := f.state
		if s.PID == os.Getpid() {
			continue
		}
		if alive(s) {
			if s.Tun == o.Tun {
				return fmt.Errorf("tunsocks pid %d is running with TUN %s and owns its routing (%s); stop it first", s.PID, s.Tun, f.path)
			}
			if clash := clashes(s, &o); clash != "" {
				return fmt.Errorf("tunsocks pid %d (TUN %s) already uses %s; give this run another --route-table / --rule-priority", s.PID, s.Tun, clash)
			}
			continue
		}
		if err := removeState(s, log); err != nil {
			return fmt.Errorf("removing leftovers of crashed run, pid %d (%s): %w", s.PID, f.path, err)
		}
		if err := os.Remove(f.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		log.Warn(fmt.Sprintf("removed leftovers of crashed run, pid %d", s.PID), "tun", s.Tun, "state", f.path, "objects", len(s.Describe()))
	}
	return nil
}

// clashes names what a live run s uses that o would use too.
func clashes(s *State, o *Options) string {
	for _, r := range s.Rules {
		if r.Table == o.table() && r.Table != mainTable {
			return "table " + strconv.Itoa(r.Table)
		}
		if r.Priority >= o.priority() && r.Priority < o.priority()+ruleSpan {
			return "rule priority " + strconv.Itoa(r.Priority)
		}
	}
	return ""
}

// Cleanup removes the leftovers of dead runs in this network namespace
// (only those of TUN tun, when tun is not ""): `tunsocks cleanup`, the way
// out of a tripped kill switch. A live run is not touched: it is reported
// as an error (stop it and it cleans up itself).
func Cleanup(stateDir, tun string, log *slog.Logger) ([]Cleaned, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	states, err := statesHere(stateDir)
	if err != nil {
		return nil, err
	}
	var done []Cleaned
	var errs []error
	for _, f := range states {
		s := f.state
		if tun != "" && s.Tun != tun {
			continue
		}
		if alive(s) {
			errs = append(errs, fmt.Errorf("tunsocks pid %d is still running with TUN %s: stop it (SIGINT or SIGTERM) and it removes its own changes", s.PID, s.Tun))
			continue
		}
		if err := removeState(s, log); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.path, err))
			continue
		}
		if err := os.Remove(f.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		done = append(done, Cleaned{PID: s.PID, Tun: s.Tun, Path: f.path, Objects: s.Describe()})
	}
	return done, errors.Join(errs...)
}

// Installed reads the state of a run of tun in this namespace (live or
// dead), or nil when there is none: `explain --route` uses it.
func Installed(stateDir, tun string) (*State, error) {
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	states, err := statesHere(stateDir)
	if err != nil {
		return nil, err
	}
	for _, f := range states {
		if tun == "" || f.state.Tun == tun {
			return f.state, nil
		}
	}
	return nil, nil
}

type stateFile struct {
	path  string
	state *State
}

// statesHere reads the state files made in this network namespace.
func statesHere(dir string) ([]stateFile, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	ns := netnsID("self")
	var out []stateFile
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		s, err := readState(p)
		if err != nil {
			return nil, err
		}
		if s == nil || s.Netns != ns {
			continue
		}
		out = append(out, stateFile{p, s})
	}
	return out, nil
}

// alive reports whether the state's owner still runs.
func alive(s *State) bool {
	st, err := procStartTime(s.PID)
	return err == nil && st == s.StartTime
}

// procStartTime is field 22 of /proc/PID/stat: the start time in clock
// ticks since boot, which tells a reused pid from the original.
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	return strconv.ParseUint(f[19], 10, 64) // field 22; f[0] is field 3
}

// netnsID is the network namespace of a process, as its ns/net link reads.
func netnsID(pid string) string {
	l, err := os.Readlink("/proc/" + pid + "/ns/net")
	if err != nil {
		return ""
	}
	return l
}

// removeState removes every object s names, tolerating the ones already
// gone (a crashed run's TUN takes its routes with it).
func removeState(s *State, log *slog.Logger) error {
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("hostnet: netlink: %w", err)
	}
	defer nl.Close()
	var errs []error
	// Rules first: from here on nothing is captured, so nothing depends
	// on the rest.
	for i := len(s.Rules) - 1; i >= 0; i-- {
		if err := delRule(nl, s.Rules[i]); err != nil {
			errs = append(errs, err)
		}
	}
	// A rule another program re-added, or the healer added twice.
	errs = append(errs, delDuplicateRules(nl, s.Rules))
	for _, r := range s.Routes {
		if err := delRoute(nl, r); err != nil {
			errs = append(errs, err)
		}
	}
	for _, c := range s.Forward {
		if err := deleteForwardAccept(c, s.FwdTag); err != nil {
			errs = append(errs, err)
		}
	}
	if s.NftTable != "" {
		if err := deleteNftTable(s.NftTable); err != nil {
			errs = append(errs, err)
		}
	}
	for i := len(s.Sysctls) - 1; i >= 0; i-- {
		if err := restoreSysctl(s.Sysctls[i], log); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func family(f int) int {
	if f == 6 {
		return unix.AF_INET6
	}
	return unix.AF_INET
}

// toNetlink converts r for RTM_NEWRULE / RTM_DELRULE.
func (r Rule) toNetlink() *netlink.Rule {
	nr := netlink.NewRule()
	nr.Family = family(r.Family)
	nr.Priority = r.Priority
	if r.Action == ActionUnreachable {
		nr.Type = unix.FR_ACT_UNREACHABLE
	} else {
		nr.Table = r.Table
	}
	if r.Mask != 0 {
		m := r.Mask
		nr.Mark, nr.Mask = r.Mark, &m
	}
	if r.To.IsValid() {
		nr.Dst = &net.IPNet{IP: r.To.Addr().AsSlice(), Mask: net.CIDRMask(r.To.Bits(), r.To.Addr().BitLen())}
	}
	nr.IifName = r.Iif
	if r.UIDs != nil {
		nr.UIDRange = netlink.NewRuleUIDRange(r.UIDs.Start, r.UIDs.End)
	}
	nr.IPProto = r.IPProto
	if r.DPort != 0 {
		nr.Dport = netlink.NewRulePortRange(r.DPort, r.DPort)
	}
	nr.SuppressPrefixlen = r.SuppressPrefixlen()
	return nr
}

// ruleFromNetlink is the inverse of toNetlink for a listed rule. Only
// lookup and unreachable rules are told apart (by their table: 0 is no
// lookup), which is all tunsocks installs.
func ruleFromNetlink(nr netlink.Rule) Rule {
	r := Rule{Family: 4, Priority: nr.Priority, Action: ActionLookup, Table: nr.Table, Iif: nr.IifName, IPProto: nr.IPProto}
	if nr.Family == unix.AF_INET6 {
		r.Family = 6
	}
	if nr.Table == 0 {
		r.Action, r.Table = ActionUnreachable, 0
	}
	if nr.Mask != nil && (*nr.Mask != 0 || nr.Mark != 0) {
		r.Mark, r.Mask = nr.Mark, *nr.Mask
	} else if nr.Mark != 0 {
		r.Mark, r.Mask = nr.Mark, 0xffffffff
	}
	if nr.Dst != nil {
		if a, ok := netip.AddrFromSlice(nr.Dst.IP); ok {
			ones, _ := nr.Dst.Mask.Size()
			r.To = netip.PrefixFrom(a.Unmap(), ones)
		}
	}
	if nr.UIDRange != nil {
		r.UIDs = &UIDRange{Start: nr.UIDRange.Start, End: nr.UIDRange.End}
	}
	if nr.Dport != nil {
		r.DPort = nr.Dport.Start
	}
	if nr.SuppressPrefixlen >= 0 && r.Action == ActionLookup {
		r.Suppress = nr.SuppressPrefixlen + 1
	}
	return r
}

func addRule(nl *netlink.Handle, r Rule) error {
	if err := nl.RuleAdd(r.toNetlink()); err != nil && !errors.Is(err, unix.EEXIST) {
		if r.UIDs != nil && errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("hostnet: rule %s: %w (the kernel lacks uid-based routing rules: drop --exclude-uid / --include-uid)", r, err)
		}
		return fmt.Errorf("hostnet: rule %s: %w", r, err)
	}
	return nil
}

func delRule(nl *netlink.Handle, r Rule) error {
	if err := nl.RuleDel(r.toNetlink()); err != nil && !gone(err) {
		return fmt.Errorf("hostnet: delete rule %s: %w", r, err)
	}
	return nil
}

// delDuplicateRules deletes rules equal to one of rs that are still there.
func delDuplicateRules(nl *netlink.Handle, rs []Rule) error {
	want := map[string]Rule{}
	for _, r := range rs {
		want[r.Key()] = r
	}
	var errs []error
	for _, fam := range []int{4, 6} {
		for range 4 { // a few passes: each deletes one copy of each
			listed, err := nl.RuleList(family(fam))
			if err != nil {
				return fmt.Errorf("hostnet: list rules: %w", err)
			}
			found := false
			for _, nr := range listed {
				if r, ok := want[ruleFromNetlink(nr).Key()]; ok {
					found = true
					if err := delRule(nl, r); err != nil {
						errs = append(errs, err)
					}
				}
			}
			if !found || len(errs) > 0 {
				break
			}
		}
	}
	return errors.Join(errs...)
}

func routeOf(r Route, ifindex int) *netlink.Route {
	dst := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	if r.Family == 6 {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &netlink.Route{Family: family(r.Family), Table: r.Table, Dst: dst, LinkIndex: ifindex, Scope: netlink.SCOPE_LINK}
}

func addRoute(nl *netlink.Handle, r Route, ifindex int) error {
	if err := nl.RouteReplace(routeOf(r, ifindex)); err != nil {
		return fmt.Errorf("hostnet: route default dev %s table %d (IPv%d): %w", r.Dev, r.Table, r.Family, err)
	}
	return nil
}

func delRoute(nl *netlink.Handle, r Route) error {
	link, err := nl.LinkByName(r.Dev)
	if err != nil {
		return nil // the TUN is gone, and its routes with it
	}
	rt := routeOf(r, link.Attrs().Index)
	rt.Scope = 0
	if err := nl.RouteDel(rt); err != nil && !gone(err) {
		return fmt.Errorf("hostnet: delete route default dev %s table %d: %w", r.Dev, r.Table, err)
	}
	return nil
}

// gone reports whether err says the object is not there.
func gone(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENODEV)
}

// plannedSysctls reads the current value of every sysctl o changes.
func plannedSysctls(o *Options) ([]Sysctl, error) {
	type want struct{ path, val, dev string }
	var ws []want
	if o.AutoRoute {
		// Strict reverse-path filtering checks a reply with the mark it
		// carries (nftables marks replies of inbound connections) only when
		// src_valid_mark is on; wg-quick sets it for the same reason.
		ws = append(ws, want{"net/ipv4/conf/all/src_valid_mark", "1", ""})
	}
	if o.Gateway != "" {
		ws = append(ws, want{"net/ipv4/ip_forward", "1", ""})
	}
	// Replies the TUN delivers for forwarded or source-bound flows must
	// pass reverse-path filtering: loose on the TUN (the effective value
	// is the larger of all and the device's).
	ws = append(ws, want{"net/ipv4/conf/" + o.Tun + "/rp_filter", "2", o.Tun})
	var out []Sysctl
	for _, w := range ws {
		old, err := readSysctl(w.path)
		if err != nil {
			return nil, err
		}
		if old == w.val {
			continue // nothing to change, nothing to restore
		}
		out = append(out, Sysctl{Path: w.path, Old: old, New: w.val, Dev: w.dev})
	}
	return out, nil
}

func sysctlFile(path string) string { return "/proc/sys/" + path }

func readSysctl(path string) (string, error) {
	b, err := os.ReadFile(sysctlFile(path))
	if err != nil {
		return "", fmt.Errorf("hostnet: sysctl %s: %w", path, err)
	}
	return strings.TrimSpace(string(b)), nil
}

func writeSysctl(path, val string) error {
	if err := os.WriteFile(sysctlFile(path), []byte(val+"\n"), 0o644); err != nil {
		return fmt.Errorf("hostnet: sysctl %s = %s: %w", path, val, err)
	}
	return nil
}

// restoreSysctl puts the old value back, unless someone else changed it
// since (then theirs stays) or the device it belongs to is gone.
func restoreSysctl(s Sysctl, log *slog.Logger) error {
	cur, err := readSysctl(s.Path)
	if err != nil {
		if s.Dev != "" && errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	if cur != s.New {
		if cur != s.Old {
			log.Warn("sysctl changed by someone else since tunsocks set it; leaving it", "sysctl", s.Path, "now", cur, "tunsocks set", s.New, "before", s.Old)
		}
		return nil
	}
	return writeSysctl(s.Path, s.Old)
}

// ExplainHere follows f through the rules of the run of tun (the only run
// when tun is ""), with this namespace's main table and TUN. The state is
// nil when no run has installed anything.
func ExplainHere(stateDir, tun string, f Flow) (Verdict, *State, error) {
	s, err := Installed(stateDir, tun)
	if err != nil || s == nil {
		return Verdict{}, s, err
	}
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return Verdict{}, s, fmt.Errorf("hostnet: netlink: %w", err)
	}
	defer nl.Close()
	_, lerr := nl.LinkByName(s.Tun)
	main := func(dst netip.Addr) (netip.Prefix, string, bool) {
		fam := unix.AF_INET
		if dst.Is6() {
			fam = unix.AF_INET6
		}
		routes, err := nl.RouteListFiltered(fam, &netlink.Route{Table: mainTable}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return netip.Prefix{}, "", false
		}
		best, desc, found := netip.Prefix{}, "", false
		for _, rt := range routes {
			p := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			if fam == unix.AF_INET6 {
				p = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			}
			if rt.Dst != nil {
				a, _ := netip.AddrFromSlice(rt.Dst.IP)
				ones, _ := rt.Dst.Mask.Size()
				p = netip.PrefixFrom(a.Unmap(), ones)
			}
			if !p.Contains(dst) || (found && p.Bits() <= best.Bits()) {
				continue
			}
			best, found = p, true
			desc = p.String()
			if rt.Gw != nil {
				desc += " via " + rt.Gw.String()
			}
			if l, err := nl.LinkByIndex(rt.LinkIndex); err == nil {
				desc += " dev " + l.Attrs().Name
			}
		}
		return best, desc, found
	}
	return Explain(s, f, main, lerr == nil), s, nil
}
