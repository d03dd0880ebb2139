package wg

import "errors"

// FirewallDrop is a host firewall chain that would drop a phone's packets
// to the WireGuard port, and the command that lets them in.
type FirewallDrop struct {
	Chain string // "inet filter input", as nft names it
	Why   string // "policy drop", "a rule drops everything not accepted before it"
	Fix   string // the command to run, e.g. "nft insert rule inet filter input udp dport 51820 accept"
}

// ErrFirewallUnreadable is wrapped by CheckFirewall when the rules cannot
// be read (reading nftables needs CAP_NET_ADMIN).
var ErrFirewallUnreadable = errors.New("the host firewall cannot be read")
