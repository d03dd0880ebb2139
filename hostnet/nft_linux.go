package hostnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// tunsocks' own nftables table (family inet) holds:
//
//	chain pre  (filter, prerouting, mangle): iifname != TUN ct direction reply meta mark set M
//	chain out  (route, output, mangle):      ct direction reply meta mark set M
//	                                         meta mark 0 socket cgroupv2 level L ID meta mark set M   (excluded cgroups)
//	                                         meta mark 0 socket cgroupv2 level L ID meta mark set M+1 (--include-cgroup)
//	chain dot  (filter, output, filter):     oifname TUN tcp dport 853 reject with tcp reset
//	chain fwd  (filter, forward, filter):    oifname TUN tcp dport 853 reject with tcp reset
//	chain gwdns (nat, prerouting, dstnat):   iifname GW fib daddr type local udp|tcp dport 53 dnat to DNS (--gateway)
//
// Marking reply-direction packets makes replies of connections that came
// in from elsewhere (ssh to this host, published container ports) leave by
// main instead of the TUN; in a route chain the mark change re-routes.

func nftConn() (*nftables.Conn, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("hostnet: nftables: %w", err)
	}
	return c, nil
}

func flushNft(c *nftables.Conn, what string) error {
	if err := c.Flush(); err != nil {
		if errors.Is(err, unix.ENOENT) && what != "" {
			return fmt.Errorf("hostnet: nftables %s: %w (is the kernel's nf_tables support, with the socket, fib and nat expressions, loaded?)", what, err)
		}
		return fmt.Errorf("hostnet: nftables %s: %w", what, err)
	}
	return nil
}

// ifname is an interface name as nftables compares it (IFNAMSIZ, padded).
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}

func u32(v uint32) []byte {
	b := make([]byte, 4)
	binary.NativeEndian.PutUint32(b, v)
	return b
}

func setMark(m uint32) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: u32(m)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}
}

func markIs(m uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: u32(m)},
	}
}

var ctReply = []expr.Any{
	&expr.Ct{Key: expr.CtKeyDIRECTION, Register: 1},
	&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}}, // IP_CT_DIR_REPLY
}

func iif(op expr.CmpOp, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: ifname(name)},
	}
}

func oif(name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(name)},
	}
}

func l4dport(proto byte, port uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
	}
}

func cgroupIs(cg Cgroup) []expr.Any {
	return []expr.Any{
		&expr.Socket{Key: expr.SocketKeyCgroupv2, Level: uint32(cg.Level), Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint64(nil, cg.ID)},
	}
}

func join(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// installNft creates tunsocks' table (replacing a stale one of the same name).
func installNft(o *Options) error {
	c, err := nftConn()
	if err != nil {
		return err
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: o.NftTable()}
	// Adding then deleting makes the delete succeed whether or not a
	// stale table exists; the batch is atomic.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	accept := nftables.ChainPolicyAccept
	pre := c.AddChain(&nftables.Chain{Name: "pre", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle, Policy: &accept})
	out := c.AddChain(&nftables.Chain{Name: "out", Table: t, Type: nftables.ChainTypeRoute, Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityMangle, Policy: &accept})
	dot := c.AddChain(&nftables.Chain{Name: "dot", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	fwd := c.AddChain(&nftables.Chain{Name: "fwd", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	rule := func(ch *nftables.Chain, e []expr.Any) { c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: e}) }

	rule(pre, join(iif(expr.CmpOpNeq, o.Tun), ctReply, setMark(o.Mark)))
	rule(out, join(ctReply, setMark(o.Mark)))
	for _, cg := range o.ExcludeCgroups {
		rule(out, join(markIs(0), cgroupIs(cg), setMark(o.Mark)))
	}
	for _, cg := range o.IncludeCgroups {
		rule(out, join(markIs(0), cgroupIs(cg), setMark(o.IncludeMark())))
	}
	// DNS over TLS that would enter the TUN gets a RST at once, so
	// clients fall back to plain DNS, which tunsocks answers.
	reset := &expr.Reject{Type: unix.NFT_REJECT_TCP_RST}
	rule(dot, join(oif(o.Tun), l4dport(unix.IPPROTO_TCP, 853), []expr.Any{reset}))
	rule(fwd, join(oif(o.Tun), l4dport(unix.IPPROTO_TCP, 853), []expr.Any{reset}))

	if o.Gateway != "" && len(o.DNS) > 0 {
		gw := c.AddChain(&nftables.Chain{Name: "gwdns", Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: &accept})
		local := []expr.Any{
			&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: u32(unix.RTN_LOCAL)},
		}
		for _, a := range o.DNS {
			nfproto, fam := byte(unix.NFPROTO_IPV4), uint32(unix.NFPROTO_IPV4)
			if a.Is6() {
				nfproto, fam = unix.NFPROTO_IPV6, unix.NFPROTO_IPV6
			}
			for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
				rule(gw, join(iif(expr.CmpOpEq, o.Gateway),
					[]expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}}},
					local, l4dport(proto, 53),
					[]expr.Any{
						&expr.Immediate{Register: 1, Data: a.AsSlice()},
						&expr.NAT{Type: expr.NATTypeDestNAT, Family: fam, RegAddrMin: 1},
					}))
			}
		}
	}
	return flushNft(c, "table inet "+o.NftTable())
}

func deleteNftTable(name string) error {
	c, err := nftConn()
	if err != nil {
		return err
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: name}
	c.AddTable(t) // see installNft: makes the delete succeed when it is gone
	c.DelTable(t)
	return flushNft(c, "delete table inet "+name)
}

var familyNames = map[nftables.TableFamily]string{
	nftables.TableFamilyIPv4: "ip", nftables.TableFamilyIPv6: "ip6", nftables.TableFamilyINet: "inet",
}

func familyByName(s string) (nftables.TableFamily, bool) {
	for f, n := range familyNames {
		if n == s {
			return f, true
		}
	}
	return 0, false
}

// forwardDropChains finds the base chains hooked at forward whose policy
// is drop (Docker sets this on ip filter FORWARD): an accept in tunsocks'
// own table cannot override them, so the gateway's accept rules go into
// each of them.
func forwardDropChains() ([]ChainRef, error) {
	c, err := nftConn()
	if err != nil {
		return nil, err
	}
	chains, err := c.ListChains()
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EPROTONOSUPPORT) {
			return nil, nil // no nf_tables: nothing drops
		}
		return nil, fmt.Errorf("hostnet: list nftables chains: %w", err)
	}
	var out []ChainRef
	for _, ch := range chains {
		if ch.Hooknum == nil || *ch.Hooknum != *nftables.ChainHookForward || ch.Policy == nil || *ch.Policy != nftables.ChainPolicyDrop {
			continue
		}
		fam, ok := familyNames[ch.Table.Family]
		if !ok {
			continue
		}
		out = append(out, ChainRef{Family: fam, Table: ch.Table.Name, Chain: ch.Name})
	}
	return out, nil
}

// legacyIptablesFilter reports whether legacy (non-nftables) iptables has
// a filter table, whose policy tunsocks cannot read.
func legacyIptablesFilter() bool {
	b, err := os.ReadFile("/proc/net/ip_tables_names")
	return err == nil && strings.Contains(string(b), "filter")
}

// insertForwardAccept puts "iifname GW oifname TUN accept" and the reverse
// at the top of chain c, tagged with a comment.
func insertForwardAccept(ref ChainRef, gw, tun, tag string) error {
	fam, ok := familyByName(ref.Family)
	if !ok {
		return fmt.Errorf("hostnet: nftables family %q", ref.Family)
	}
	c, err := nftConn()
	if err != nil {
		return err
	}
	t := &nftables.Table{Family: fam, Name: ref.Table}
	ch := &nftables.Chain{Name: ref.Chain, Table: t}
	ud := userdata.AppendString(nil, userdata.TypeComment, tag)
	accept := []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}
	// Inserted one after the other at the top: the second ends up first.
	c.InsertRule(&nftables.Rule{Table: t, Chain: ch, UserData: ud, Exprs: join(iif(expr.CmpOpEq, tun), oif(gw), accept)})
	c.InsertRule(&nftables.Rule{Table: t, Chain: ch, UserData: ud, Exprs: join(iif(expr.CmpOpEq, gw), oif(tun), accept)})
	return flushNft(c, "accept rules in "+ref.String())
}

// countTagged counts the rules tagged tag in chain ref.
func countTagged(ref ChainRef, tag string) (int, error) {
	fam, ok := familyByName(ref.Family)
	if !ok {
		return 0, nil
	}
	c, err := nftConn()
	if err != nil {
		return 0, err
	}
	rules, err := c.GetRules(&nftables.Table{Family: fam, Name: ref.Table}, &nftables.Chain{Name: ref.Chain})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, r := range rules {
		if s, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok && s == tag {
			n++
		}
	}
	return n, nil
}

// deleteForwardAccept removes the rules tagged tag from chain ref.
func deleteForwardAccept(ref ChainRef, tag string) error {
	fam, ok := familyByName(ref.Family)
	if !ok {
		return nil
	}
	c, err := nftConn()
	if err != nil {
		return err
	}
	t := &nftables.Table{Family: fam, Name: ref.Table}
	ch := &nftables.Chain{Name: ref.Chain, Table: t}
	rules, err := c.GetRules(t, ch)
	if err != nil {
		if gone(err) {
			return nil // the table or chain went away (Docker stopped)
		}
		return fmt.Errorf("hostnet: list rules of %s: %w", ref, err)
	}
	n := 0
	for _, r := range rules {
		if s, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok && s == tag {
			if err := c.DelRule(r); err != nil {
				return fmt.Errorf("hostnet: delete rule in %s: %w", ref, err)
			}
			n++
		}
	}
	if n == 0 {
		return nil
	}
	return flushNft(c, "delete accept rules in "+ref.String())
}
