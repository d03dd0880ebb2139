package wg

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// CheckFirewall reads the nftables ruleset of the current network
// namespace (iptables-nft rules included; not the legacy iptables) and
// returns every base chain on the input hook that would drop a UDP
// datagram to port: one whose policy is drop, or that ends in a rule
// dropping or rejecting everything, with no rule before that accepting
// UDP to port. It reads only; it never changes the firewall.
func CheckFirewall(port uint16) ([]FirewallDrop, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("wg: firewall: %w", err)
	}
	defer c.CloseLasting()
	chains, err := c.ListChains()
	if err != nil {
		if errors.Is(err, syscall.EPERM) || errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("wg: firewall: %w (reading nftables needs CAP_NET_ADMIN): %w", ErrFirewallUnreadable, err)
		}
		return nil, fmt.Errorf("wg: firewall: list chains: %w", err)
	}
	var drops []FirewallDrop
	for _, ch := range chains {
		if !isInputFilter(ch) {
			continue
		}
		rules, err := c.GetRules(ch.Table, ch)
		if err != nil {
			return nil, fmt.Errorf("wg: firewall: rules of %s: %w", chainName(ch), err)
		}
		if d, ok := chainDrops(ch, rules, port, chains); ok {
			drops = append(drops, d)
		}
	}
	return drops, nil
}

func isInputFilter(ch *nftables.Chain) bool {
	if ch.Hooknum == nil || *ch.Hooknum != *nftables.ChainHookInput || ch.Type != nftables.ChainTypeFilter {
		return false
	}
	switch ch.Table.Family {
	case nftables.TableFamilyINet, nftables.TableFamilyIPv4, nftables.TableFamilyIPv6:
		return true
	}
	return false
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	}
	return fmt.Sprint(f)
}

func chainName(ch *nftables.Chain) string {
	return familyName(ch.Table.Family) + " " + ch.Table.Name + " " + ch.Name
}

// chainDrops decides for one input chain. all are every chain of the
// ruleset, to recognise the tools that made it (ufw).
func chainDrops(ch *nftables.Chain, rules []*nftables.Rule, port uint16, all []*nftables.Chain) (FirewallDrop, bool) {
	why := ""
	for _, r := range rules {
		switch classify(r.Exprs, port) {
		case ruleAcceptsPort:
			return FirewallDrop{}, false
		case ruleDropsAll:
			why = "a rule drops or rejects everything not accepted before it"
		}
		if why != "" {
			break
		}
	}
	if why == "" {
		if ch.Policy == nil || *ch.Policy != nftables.ChainPolicyDrop {
			return FirewallDrop{}, false
		}
		why = "its policy is drop"
	}
	return FirewallDrop{Chain: chainName(ch), Why: why, Fix: fixFor(ch, port, all)}, true
}

// fixFor is the command that accepts UDP to port in ch, in the words of
// the tool that made the chain.
func fixFor(ch *nftables.Chain, port uint16, all []*nftables.Chain) string {
	for _, c := range all {
		if c.Table.Name == ch.Table.Name && c.Table.Family == ch.Table.Family && strings.HasPrefix(c.Name, "ufw") {
			return fmt.Sprintf("ufw allow %d/udp", port)
		}
	}
	if ch.Name == "INPUT" && ch.Table.Name == "filter" { // iptables-nft
		cmd := "iptables"
		if ch.Table.Family == nftables.TableFamilyIPv6 {
			cmd = "ip6tables"
		}
		return fmt.Sprintf("%s -I INPUT -p udp --dport %d -j ACCEPT", cmd, port)
	}
	return fmt.Sprintf("nft insert rule %s udp dport %d accept", chainName(ch), port)
}

type ruleKind int

const (
	ruleOther       ruleKind = iota
	ruleAcceptsPort          // accepts UDP to the port (maybe only from some sources)
	ruleDropsAll             // drops or rejects with no condition
)

// classify reads the expressions nft makes for the rules that matter
// here. "udp dport P accept" is a UDP protocol match (meta l4proto, or
// the IPv4 protocol field), a load of the transport header's bytes 2..3,
// an equality (or range) on P, and an accept verdict. Anything it cannot
// read counts as a condition, so an unreadable rule never counts as a
// catch-all drop nor as the accept.
func classify(es []expr.Any, port uint16) ruleKind {
	var (
		conds     int  // conditions other than "UDP" and "to port"
		udp, dst  bool // UDP matched; port matched
		loaded    string
		verdict   = expr.VerdictKind(-100)
		rejecting bool
	)
	var portBytes [2]byte
	binary.BigEndian.PutUint16(portBytes[:], port)
	for _, e := range es {
		switch e := e.(type) {
		case *expr.Meta:
			if e.Key == expr.MetaKeyL4PROTO && !e.SourceRegister {
				loaded = "l4proto"
			} else {
				loaded = "other"
			}
		case *expr.Payload:
			switch {
			case e.Base == expr.PayloadBaseTransportHeader && e.Offset == 2 && e.Len == 2:
				loaded = "dport"
			case e.Base == expr.PayloadBaseNetworkHeader && e.Offset == 9 && e.Len == 1:
				loaded = "l4proto" // IPv4 protocol field
			default:
				loaded = "other"
			}
		case *expr.Cmp:
			switch {
			case loaded == "l4proto" && e.Op == expr.CmpOpEq && len(e.Data) == 1 && e.Data[0] == unix.IPPROTO_UDP:
				udp = true
			case loaded == "dport" && e.Op == expr.CmpOpEq && len(e.Data) == 2 && e.Data[0] == portBytes[0] && e.Data[1] == portBytes[1]:
				dst = true
			default:
				conds++
			}
			loaded = ""
		case *expr.Range:
			if loaded == "dport" && e.Op == expr.CmpOpEq && len(e.FromData) == 2 && len(e.ToData) == 2 &&
				binary.BigEndian.Uint16(e.FromData) <= port && port <= binary.BigEndian.Uint16(e.ToData) {
				dst = true
			} else {
				conds++
			}
			loaded = ""
		case *expr.Verdict:
			verdict = e.Kind
		case *expr.Reject:
			rejecting = true
		case *expr.Target: // iptables-nft: -j REJECT
			if e.Name == "REJECT" {
				rejecting = true
			} else {
				conds++
			}
		case *expr.Counter, *expr.Log:
			// no condition
		default:
			conds++ // lookups, conntrack, xt matches, ...
		}
	}
	switch {
	case verdict == expr.VerdictAccept && udp && dst:
		return ruleAcceptsPort
	case conds == 0 && !udp && !dst && (verdict == expr.VerdictDrop || rejecting):
		return ruleDropsAll
	}
	return ruleOther
}
