// Package hostnet is tunsocks' host integration: the one package that
// changes the network configuration of the host tunsocks runs on. It
// installs and removes the policy rules and the routing table that send
// traffic into the TUN (--auto-route, --include-cgroup, --include-uid,
// --gateway), the kill switch, the nftables table that keeps inbound
// connections and excluded cgroups off the TUN, the forwarding sysctls of
// gateway mode, and systemd-resolved's per-link DNS for the TUN. Everything
// goes through netlink, a Go nftables library and D-Bus; nothing runs ip,
// nft or resolvectl.
//
// Every object is recorded in a state file under /run/tunsocks/ before it is
// installed, so the leftovers of a run that died (SIGKILL, OOM, a crash) are
// removed by the next run or by `tunsocks cleanup`, and the host ends up
// exactly as it was. Only Linux has an implementation; elsewhere Install and
// Cleanup return an error wrapping errors.ErrUnsupported.
//
// The rule block, identical for IPv4 and IPv6, at priority P (default 9100),
// table T (default 29811) and tunsocks' own mark M (default 0x7473):
//
//	P+0  fwmark M lookup main                  tunsocks' own sockets, replies of inbound connections, excluded cgroups
//	P+1  fwmark M unreachable                  ...and if main has no route: never into the TUN (no loop)
//	P+2  to CIDR lookup main                   --exclude, one rule per CIDR
//	P+3  uidrange A-B lookup main              --exclude-uid, and the owner of a local upstream
//	P+4  [sel] ipproto udp|tcp dport 53 lookup T   DNS to any resolver is answered by tunsocks
//	P+5  [sel] ipproto udp|tcp dport 53 unreachable  --kill-switch: DNS never leaves unproxied
//	P+6  [sel] lookup main suppress_prefixlength 0   --lan-access: non-default routes of main stay direct
//	P+7  [sel] lookup T                        capture: T holds only "default dev TUN"
//	P+8  [sel] unreachable                     --kill-switch: reached only when the TUN (and so T's route) is gone
//
// [sel] is empty with --auto-route (everything, local and forwarded), or
// one copy per selector: "fwmark I" (sockets of an --include-cgroup, marked
// I = M+1 by nftables), "uidrange" (--include-uid), "iif IFACE" (--gateway).
package hostnet

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Defaults.
const (
	DefaultMark     uint32 = 0x7473 // "ts"
	DefaultTable           = 29811
	DefaultPriority        = 9100
	DefaultStateDir        = "/run/tunsocks"
	mainTable              = 254
	ruleSpan               = 9 // priorities P..P+8
)

// Rule actions.
const (
	ActionLookup      = "lookup"
	ActionUnreachable = "unreachable"
)

// UIDRange is an inclusive range of user ids.
type UIDRange struct {
	Start uint32 `json:"start"`
	End   uint32 `json:"end"`
}

func (r UIDRange) String() string {
	if r.Start == r.End {
		return strconv.FormatUint(uint64(r.Start), 10)
	}
	return fmt.Sprintf("%d-%d", r.Start, r.End)
}

// Contains reports whether uid is in r.
func (r UIDRange) Contains(uid uint32) bool { return uid >= r.Start && uid <= r.End }

// ParseUIDRange parses "N" or "N-M".
func ParseUIDRange(s string) (UIDRange, error) {
	lo, hi, isRange := strings.Cut(strings.TrimSpace(s), "-")
	a, err := strconv.ParseUint(lo, 10, 32)
	if err != nil {
		return UIDRange{}, fmt.Errorf("uid range %q: want N or N-M (user ids, like 1000 or 1000-1999)", s)
	}
	b := a
	if isRange {
		if b, err = strconv.ParseUint(hi, 10, 32); err != nil || b < a {
			return UIDRange{}, fmt.Errorf("uid range %q: want N or N-M with N <= M", s)
		}
	}
	return UIDRange{Start: uint32(a), End: uint32(b)}, nil
}

// Rule is one policy routing rule, in a form that is stored in the state
// file and compared with what the kernel lists.
type Rule struct {
	Family   int    `json:"family"` // 4 or 6
	Priority int    `json:"priority"`
	Action   string `json:"action"`          // ActionLookup or ActionUnreachable
	Table    int    `json:"table,omitempty"` // for ActionLookup
	// Mark/Mask select by fwmark; Mask 0 selects no mark.
	Mark uint32       `json:"mark,omitempty"`
	Mask uint32       `json:"mask,omitempty"`
	To   netip.Prefix `json:"to,omitzero"`
	Iif  string       `json:"iif,omitempty"`
	UIDs *UIDRange    `json:"uids,omitempty"`
	// IPProto and DPort select DNS (17 or 6, port 53); 0 selects none.
	IPProto int    `json:"ipproto,omitempty"`
	DPort   uint16 `json:"dport,omitempty"`
	// SuppressPrefixlen: routes with a prefix this long or shorter are
	// ignored; -1 is none. Stored +1 so the zero value means none.
	Suppress int `json:"suppress_plus1,omitempty"`
	// Why says what the rule is for (the startup block, explain).
	Why string `json:"why,omitempty"`
}

// SuppressPrefixlen returns the rule's suppress_prefixlength, or -1.
func (r Rule) SuppressPrefixlen() int { return r.Suppress - 1 }

// Key identifies a rule by everything the kernel compares (not Why).
func (r Rule) Key() string {
	r.Why = ""
	return r.String()
}

// String is the rule as `ip rule` prints it (without "from all" noise).
func (r Rule) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d:", r.Priority)
	if r.Family == 6 {
		b.WriteString(" [v6]")
	}
	if r.Mask != 0 {
		if r.Mask == 0xffffffff {
			fmt.Fprintf(&b, " fwmark %#x", r.Mark)
		} else {
			fmt.Fprintf(&b, " fwmark %#x/%#x", r.Mark, r.Mask)
		}
	}
	if r.To.IsValid() {
		fmt.Fprintf(&b, " to %s", r.To)
	}
	if r.Iif != "" {
		fmt.Fprintf(&b, " iif %s", r.Iif)
	}
	if r.IPProto != 0 {
		fmt.Fprintf(&b, " ipproto %s", protoName(r.IPProto))
	}
	if r.DPort != 0 {
		fmt.Fprintf(&b, " dport %d", r.DPort)
	}
	if r.UIDs != nil {
		fmt.Fprintf(&b, " uidrange %d-%d", r.UIDs.Start, r.UIDs.End)
	}
	if r.Action == ActionUnreachable {
		b.WriteString(" unreachable")
	} else {
		fmt.Fprintf(&b, " lookup %s", tableName(r.Table))
		if s := r.SuppressPrefixlen(); s >= 0 {
			fmt.Fprintf(&b, " suppress_prefixlength %d", s)
		}
	}
	return b.String()
}

func protoName(p int) string {
	switch p {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	}
	return strconv.Itoa(p)
}

func tableName(t int) string {
	if t == mainTable {
		return "main"
	}
	return strconv.Itoa(t)
}

// Route is a route tunsocks adds to its own table.
type Route struct {
	Family int    `json:"family"`
	Table  int    `json:"table"`
	Dev    string `json:"dev"` // default route via this device
}

// Sysctl is one /proc/sys value tunsocks changes, with the value it found.
type Sysctl struct {
	Path string `json:"path"` // relative to /proc/sys, slash-separated
	Old  string `json:"old"`
	New  string `json:"new"`
	// Dev is the interface the setting belongs to, when it dies with it.
	Dev string `json:"dev,omitempty"`
}

// Cgroup is a cgroup v2 whose sockets get a mark from nftables.
type Cgroup struct {
	Path  string `json:"path"`  // relative to the cgroup2 root, "/"-separated, no leading slash
	ID    uint64 `json:"id"`    // the cgroup's id (its inode number)
	Level int    `json:"level"` // number of path components
}

// Options is what a run asks for. Zero values mean off or the default.
type Options struct {
	// Tun is the name of the TUN device tunsocks serves (already up).
	Tun string
	// TunAddrs are the TUN's addresses; without an IPv6 one, IPv6 is
	// made unreachable instead of captured (nothing leaks).
	TunAddrs []netip.Prefix
	// DNS are tunsocks' DNS addresses inside the TUN (for resolved and for
	// the DNS of gateway devices).
	DNS []netip.Addr
	// Mark is the SO_MARK on every socket tunsocks opens (required).
	Mark     uint32
	Table    int // routing table; 0: DefaultTable
	Priority int // first rule priority; 0: DefaultPriority

	// AutoRoute captures everything, local and forwarded.
	AutoRoute bool
	// KillSwitch makes everything that would have been captured
	// unreachable when the TUN is gone.
	KillSwitch bool
	// LANAccess keeps non-default routes of main (the LAN, container
	// bridges) direct.
	LANAccess bool
	// Exclude sends these destinations direct.
	Exclude []netip.Prefix
	// ExcludeUIDs sends these users' sockets direct.
	ExcludeUIDs []UIDRange
	// ExcludeCgroups sends sockets created in these cgroups direct (used
	// for a local upstream run by root).
	ExcludeCgroups []Cgroup
	// IncludeCgroups and IncludeUIDs capture only these sockets instead
	// of everything (they need AutoRoute).
	IncludeCgroups []Cgroup
	IncludeUIDs    []UIDRange
	// Gateway captures traffic forwarded from devices on this interface.
	Gateway string
	// ForwardDrop are the base chains with a DROP forward policy (found
	// by Install) where accept rules for the gateway are inserted.
	ForwardDrop []ChainRef
}

// ChainRef names an nftables chain of another table.
type ChainRef struct {
	Family string `json:"family"` // ip, ip6, inet
	Table  string `json:"table"`
	Chain  string `json:"chain"`
}

func (c ChainRef) String() string { return c.Family + " " + c.Table + " " + c.Chain }

// IncludeMark is the mark nftables gives sockets of included cgroups.
func (o *Options) IncludeMark() uint32 { return o.Mark + 1 }

func (o *Options) table() int {
	if o.Table == 0 {
		return DefaultTable
	}
	return o.Table
}

func (o *Options) priority() int {
	if o.Priority == 0 {
		return DefaultPriority
	}
	return o.Priority
}

func (o *Options) hasV6() bool {
	return slices.ContainsFunc(o.TunAddrs, func(p netip.Prefix) bool { return p.Addr().Is6() })
}

func (o *Options) hasV4() bool {
	return slices.ContainsFunc(o.TunAddrs, func(p netip.Prefix) bool { return p.Addr().Is4() })
}

// Check validates o as a whole; errors name the flag that fixes them.
func (o *Options) Check() error {
	var errs []error
	if o.Tun == "" {
		errs = append(errs, errors.New("no TUN device name"))
	}
	if o.Mark == 0 {
		errs = append(errs, errors.New("--fwmark 0: tunsocks' own sockets need a mark so they stay off the TUN"))
	}
	if o.Mark == 0xffffffff {
		errs = append(errs, errors.New("--fwmark 0xffffffff: the mark above it is used for included cgroups; choose a smaller one"))
	}
	if t := o.table(); t <= 0 || t == mainTable || t == 253 || t == 255 || t > 0xfffffff0 {
		errs = append(errs, fmt.Errorf("--route-table %d: want a free table id other than main (254), default (253) and local (255), like %d", t, DefaultTable))
	}
	if p := o.priority(); p < 1 || p+ruleSpan > 32765 {
		errs = append(errs, fmt.Errorf("--rule-priority %d: the block needs %d priorities between 1 and 32765 (before main's rule at 32766), like %d", p, ruleSpan, DefaultPriority))
	}
	if !o.AutoRoute && o.Gateway == "" {
		errs = append(errs, errors.New("nothing to route: give --auto-route or --gateway IFACE"))
	}
	if !o.AutoRoute && (len(o.IncludeCgroups) > 0 || len(o.IncludeUIDs) > 0) {
		errs = append(errs, errors.New("--include-cgroup and --include-uid choose what --auto-route captures: add --auto-route"))
	}
	if o.Gateway != "" && o.Gateway == o.Tun {
		errs = append(errs, fmt.Errorf("--gateway %s: that is the TUN itself; name the LAN interface devices reach this host on", o.Gateway))
	}
	if !o.hasV4() && !o.hasV6() {
		errs = append(errs, errors.New("the TUN has no address: give --tun-addr"))
	}
	for _, p := range o.Exclude {
		if !p.IsValid() {
			errs = append(errs, fmt.Errorf("--exclude %v: want a CIDR like 10.0.0.0/8", p))
		}
	}
	return errors.Join(errs...)
}

// captureSelectors are the [sel] of the capture rules, as partial rules.
func (o *Options) captureSelectors() []Rule {
	var sels []Rule
	if o.AutoRoute {
		if len(o.IncludeCgroups) == 0 && len(o.IncludeUIDs) == 0 {
			return []Rule{{}} // everything
		}
		if len(o.IncludeCgroups) > 0 {
			sels = append(sels, Rule{Mark: o.IncludeMark(), Mask: 0xffffffff})
		}
		for _, u := range o.IncludeUIDs {
			u := u
			sels = append(sels, Rule{UIDs: &u})
		}
	}
	if o.Gateway != "" {
		sels = append(sels, Rule{Iif: o.Gateway})
	}
	return sels
}

// Rules returns the rule block o installs, IPv4 then IPv6, in priority order.
func (o *Options) Rules() []Rule {
	var out []Rule
	for _, fam := range []int{4, 6} {
		out = append(out, o.familyRules(fam)...)
	}
	return out
}

func (o *Options) familyRules(fam int) []Rule {
	p, t := o.priority(), o.table()
	var rs []Rule
	add := func(r Rule) {
		r.Family = fam
		if r.Action == "" {
			r.Action = ActionLookup
		}
		rs = append(rs, r)
	}
	own := Rule{Mark: o.Mark, Mask: 0xffffffff}
	r := own
	r.Priority, r.Table, r.Why = p, mainTable, "tunsocks' own sockets and replies of inbound connections take main"
	add(r)
	r = own
	r.Priority, r.Action, r.Why = p+1, ActionUnreachable, "...and never enter the TUN, even if main has no route (no loop)"
	add(r)
	for _, c := range o.Exclude {
		if (fam == 4) != c.Addr().Is4() {
			continue
		}
		add(Rule{Priority: p + 2, To: c.Masked(), Table: mainTable, Why: "--exclude: direct"})
	}
	for _, u := range o.ExcludeUIDs {
		u := u
		add(Rule{Priority: p + 3, UIDs: &u, Table: mainTable, Why: "--exclude-uid: direct"})
	}
	// Without an address of this family on the TUN nothing of it can be
	// proxied: make it unreachable rather than let it leak.
	captured := (fam == 4 && o.hasV4()) || (fam == 6 && o.hasV6())
	for _, sel := range o.captureSelectors() {
		with := func(r Rule) Rule {
			r.Mark, r.Mask, r.Iif, r.UIDs = sel.Mark, sel.Mask, sel.Iif, sel.UIDs
			return r
		}
		if !captured {
			add(with(Rule{Priority: p + 7, Action: ActionUnreachable, Why: fmt.Sprintf("the TUN has no IPv%d address: unreachable instead of a leak", fam)}))
			continue
		}
		for _, proto := range []int{17, 6} {
			add(with(Rule{Priority: p + 4, IPProto: proto, DPort: 53, Table: t, Why: "DNS to any resolver is answered by tunsocks"}))
		}
		if o.KillSwitch {
			for _, proto := range []int{17, 6} {
				add(with(Rule{Priority: p + 5, IPProto: proto, DPort: 53, Action: ActionUnreachable, Why: "--kill-switch: DNS never leaves unproxied"}))
			}
		}
		if o.LANAccess {
			add(with(Rule{Priority: p + 6, Table: mainTable, Suppress: 1, Why: "--lan-access: non-default routes of main (LAN, bridges) stay direct"}))
		}
		add(with(Rule{Priority: p + 7, Table: t, Why: "capture: into the TUN"}))
		if o.KillSwitch {
			add(with(Rule{Priority: p + 8, Action: ActionUnreachable, Why: "--kill-switch: reached only when the TUN is gone"}))
		}
	}
	return rs
}

// Routes returns the routes of tunsocks' table.
func (o *Options) Routes() []Route {
	var rs []Route
	if o.hasV4() {
		rs = append(rs, Route{Family: 4, Table: o.table(), Dev: o.Tun})
	}
	if o.hasV6() {
		rs = append(rs, Route{Family: 6, Table: o.table(), Dev: o.Tun})
	}
	return rs
}

// NftTable is the name of tunsocks' own nftables table (family inet).
func (o *Options) NftTable() string { return "tunsocks-" + o.Tun }

// ForwardTag marks the rules tunsocks inserts into other tables' chains
// (an nftables comment), so they can be found and removed.
func (o *Options) ForwardTag() string { return "tunsocks " + o.Tun }
