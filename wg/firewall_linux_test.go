package wg

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tunsocks/tunsocks/internal/lab"
	"github.com/tunsocks/tunsocks/internal/netns"
	"github.com/tunsocks/tunsocks/internal/testenv"
)

func udpDportAccept(port uint16) []expr.Any {
	var p [2]byte
	binary.BigEndian.PutUint16(p[:], port)
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p[:]},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}
}

func TestClassifyRules(t *testing.T) {
	tcp22 := udpDportAccept(22)
	tcp22[1] = &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}}
	established := []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{6, 0, 0, 0}, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}
	rng := udpDportAccept(0)
	rng[3] = &expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: []byte{0xc0, 0}, ToData: []byte{0xcf, 0xff}}
	for _, c := range []struct {
		name string
		es   []expr.Any
		want ruleKind
	}{
		{"udp dport 51820 accept", udpDportAccept(51820), ruleAcceptsPort},
		{"udp dport 51821 accept", udpDportAccept(51821), ruleOther},
		{"tcp dport 22 accept", tcp22, ruleOther},
		{"udp dport 49152-53247 accept", rng, ruleAcceptsPort},
		{"ct state established,related accept", established, ruleOther},
		{"counter drop", []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}, ruleDropsAll},
		{"reject with icmpx admin-prohibited", []expr.Any{&expr.Reject{Type: 2, Code: 3}}, ruleDropsAll},
		{"iptables -j REJECT", []expr.Any{&expr.Counter{}, &expr.Target{Name: "REJECT"}}, ruleDropsAll},
		{"ct state invalid drop", append(established[:3:3], &expr.Verdict{Kind: expr.VerdictDrop}), ruleOther},
	} {
		if got := classify(c.es, 51820); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

var nsSeq atomic.Int32

// testNetns makes a namespace for this test and removes it afterwards.
func testNetns(t *testing.T) string {
	t.Helper()
	testenv.NeedRoot(t, "network namespaces")
	name := fmt.Sprintf("%s%d-wg%d", lab.Prefix, os.Getpid(), nsSeq.Add(1))
	if err := netns.Create(name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := netns.Delete(name); err != nil {
			t.Error(err)
		}
	})
	return name
}

func TestCheckFirewallInNamespace(t *testing.T) {
	ns := testNetns(t)
	check := func() []FirewallDrop {
		t.Helper()
		var drops []FirewallDrop
		if err := netns.Do(ns, func() (err error) {
			drops, err = CheckFirewall(51820)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return drops
	}
	if d := check(); len(d) != 0 {
		t.Fatalf("empty ruleset: %+v", d)
	}
	var table *nftables.Table
	var chain *nftables.Chain
	nft := func(fn func(c *nftables.Conn)) {
		t.Helper()
		if err := netns.Do(ns, func() error {
			c, err := nftables.New()
			if err != nil {
				return err
			}
			fn(c)
			return c.Flush()
		}); err != nil {
			t.Fatal(err)
		}
	}
	drop := nftables.ChainPolicyDrop
	nft(func(c *nftables.Conn) {
		table = c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "tskfilter"})
		chain = c.AddChain(&nftables.Chain{Name: "input", Table: table, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &drop})
		// An output chain with policy drop is not about us.
		c.AddChain(&nftables.Chain{Name: "output", Table: table, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &drop})
	})
	d := check()
	if len(d) != 1 || d[0].Chain != "inet tskfilter input" || !strings.Contains(d[0].Why, "policy") ||
		d[0].Fix != "nft insert rule inet tskfilter input udp dport 51820 accept" {
		t.Fatalf("policy drop: %+v", d)
	}
	// The printed fix, applied, makes the warning go away.
	nft(func(c *nftables.Conn) {
		c.InsertRule(&nftables.Rule{Table: table, Chain: chain, Exprs: udpDportAccept(51820)})
	})
	if d := check(); len(d) != 0 {
		t.Fatalf("after accepting the port: %+v", d)
	}
	// Policy accept, but a catch-all reject before the accept.
	accept := nftables.ChainPolicyAccept
	nft(func(c *nftables.Conn) {
		c.FlushChain(chain)
		c.AddChain(&nftables.Chain{Name: "input", Table: table, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
		c.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}}})
		c.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: udpDportAccept(51820)})
	})
	d = check()
	if len(d) != 1 || !strings.Contains(d[0].Why, "rejects everything") {
		t.Fatalf("catch-all reject: %+v", d)
	}
}

func TestEndpointsInNamespace(t *testing.T) {
	ns := testNetns(t)
	err := lab.WithNetlink(ns, func(h *netlink.Handle) error {
		add := func(l netlink.Link, addrs ...string) error {
			if err := h.LinkAdd(l); err != nil {
				return err
			}
			for _, s := range addrs {
				p := netip.MustParsePrefix(s)
				a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}, Flags: unix.IFA_F_NODAD}
				if err := h.AddrAdd(l, a); err != nil {
					return err
				}
			}
			return h.LinkSetUp(l)
		}
		// veth pairs stand in for NICs and a bridge (dummy and bridge
		// links need modules this kernel may not have); the peer ends
		// stay down, so their links carry no addresses of interest.
		veth := func(name string) *netlink.Veth {
			return &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}
		}
		if err := add(veth("eth0"), "192.168.77.2/24", "2001:db8:77::2/64"); err != nil {
			return err
		}
		if err := add(veth("docker0"), "172.17.0.1/16"); err != nil {
			return err
		}
		return add(veth("lan1"), "10.55.0.9/24")
	})
	if err != nil {
		t.Fatal(err)
	}
	endpoints := func() []Candidate {
		var c []Candidate
		if err := netns.Do(ns, func() (err error) { c, err = Endpoints(0); return err }); err != nil {
			t.Fatal(err)
		}
		return c
	}
	// No default route: every usable address, IPv4 first, no docker0.
	got := fmt.Sprint(endpoints())
	if got != "[{192.168.77.2 eth0 false} {10.55.0.9 lan1 false} {2001:db8:77::2 eth0 false}]" &&
		got != "[{10.55.0.9 lan1 false} {192.168.77.2 eth0 false} {2001:db8:77::2 eth0 false}]" {
		t.Fatalf("without a default route: %s", got)
	}
	// A default route via lan1: its source alone.
	if err := lab.WithNetlink(ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName("lan1")
		if err != nil {
			return err
		}
		return h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP("10.55.0.1")})
	}); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(endpoints()); got != "[{10.55.0.9 lan1 true}]" {
		t.Fatalf("with a default route via lan1: %s", got)
	}
}
