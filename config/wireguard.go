package config

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/tunsocks/tunsocks/wg"
)

// WireGuardConfig is the `wireguard:` section: phones and other devices
// join over WireGuard (their stock app scans a QR code) and their traffic
// takes the same rules, DNS and upstreams as the TUN's. `tunsocks wg`
// fills it from its flags; in `tunsocks run` the section turns the
// inbound on next to the TUN.
type WireGuardConfig struct {
	// Listen is the UDP address; the zero address listens on every
	// address (default :51820).
	Listen netip.AddrPort `yaml:"listen"`
	// Peers are added to the state file when missing; their configs are
	// printed (all peers' when empty).
	Peers []string `yaml:"peers"`
	// Endpoint is host:port as phones reach this host; "" chooses it
	// (the default route's source address, else every global address).
	Endpoint string `yaml:"endpoint"`
	// State is the file of keys and peers; "": the user's config
	// directory, tunsocks/wg.json.
	State string `yaml:"state"`
	// QRPNG is a directory to write NAME.png and NAME.conf to; "": none.
	QRPNG string `yaml:"qr-png"`
	// QR prints each config's QR code in the terminal (default true).
	QR bool `yaml:"qr"`
	// Range4 and Range6 are the tunnel address ranges; the zero Prefix
	// keeps the state file's (first use: 10.7.0.0/24, fd07::/64).
	Range4 netip.Prefix `yaml:"-"`
	Range6 netip.Prefix `yaml:"-"`
	// MTU of the tunnel, 1280..65535 (default 1420).
	MTU int `yaml:"mtu"`
	// BlockQUIC answers UDP to port 443 from peers with ICMP port
	// unreachable, so apps fall back to TCP, which the proxy sees
	// (default true).
	BlockQUIC bool `yaml:"block-quic"`
	// BlockDoT resets TCP to port 853 from peers, so Android's Private
	// DNS falls back to plain DNS, which gets fake IPs (default true).
	BlockDoT bool `yaml:"block-dot"`
	// Pcap writes every peer's packets to this file; PcapPeers writes
	// one file per peer, DIR/NAME.pcap. "": none.
	Pcap      string `yaml:"pcap"`
	PcapPeers string `yaml:"pcap-peers"`
}

// DefaultWireGuard is the section with its defaults.
func DefaultWireGuard() *WireGuardConfig {
	return &WireGuardConfig{
		Listen:    netip.AddrPortFrom(netip.Addr{}, wg.DefaultPort),
		QR:        true,
		MTU:       wg.DefaultMTU,
		BlockQUIC: true,
		BlockDoT:  true,
	}
}

// ParseWGListen reads a listen address: ":51820", "0.0.0.0:51820",
// "[::]:51820", "192.168.1.5:51820".
func ParseWGListen(s string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(strings.TrimSpace(s))
	p, perr := strconv.ParseUint(port, 10, 16)
	if err != nil || perr != nil {
		return netip.AddrPort{}, fmt.Errorf("%q: want [ADDRESS]:PORT, like :51820 or 192.168.1.5:51820", s)
	}
	if host == "" {
		return netip.AddrPortFrom(netip.Addr{}, uint16(p)), nil
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q: the address must be an IP address of this host (or nothing, for all), like :51820 or 192.168.1.5:51820", s)
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(p)), nil
}

// CheckWGEndpoint says what is wrong with an endpoint, if anything.
func CheckWGEndpoint(s string) error {
	host, port, err := net.SplitHostPort(s)
	if _, perr := strconv.ParseUint(port, 10, 16); err != nil || perr != nil || host == "" || port == "0" {
		return fmt.Errorf("%q: want HOST:PORT as phones reach this host, like 192.168.1.5:51820, [2001:db8::5]:51820 or pc.lan:51820", s)
	}
	if a, err := netip.ParseAddr(host); err == nil && (a.IsUnspecified() || a.IsLoopback()) {
		return fmt.Errorf("%q: a phone cannot reach this host at %s; give an address of this host on the phone's network", s, a)
	}
	return nil
}

// SetWGRange puts a tunnel range in Range4 or Range6 by its family.
func (w *WireGuardConfig) SetWGRange(s string) error {
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("%q: want a prefix like %s or %s", s, wg.DefaultRange4, wg.DefaultRange6)
	}
	if p.Addr().Is4() {
		if p.Bits() > 30 {
			return fmt.Errorf("%q: an IPv4 range needs /30 or wider", s)
		}
		w.Range4 = p.Masked()
	} else {
		if p.Bits() > 126 {
			return fmt.Errorf("%q: an IPv6 range needs /126 or wider", s)
		}
		w.Range6 = p.Masked()
	}
	return nil
}

func (d *decoder) wireguard(n *yaml.Node) {
	if d.c.WireGuard == nil {
		d.c.WireGuard = DefaultWireGuard()
	}
	w := d.c.WireGuard
	pos := func(k string) string { return "wireguard." + k }
	fields := map[string]func(k, v *yaml.Node){
		"listen": func(_, v *yaml.Node) {
			if s, ok := d.scalar(v, pos("listen"), "an address like :51820"); ok {
				ap, err := ParseWGListen(s)
				if err != nil {
					d.failErr(deref(v).Line, err, "wireguard.listen %v", err)
					return
				}
				w.Listen = ap
				d.c.setLine(pos("listen"), deref(v).Line)
			}
		},
		"peers": func(_, v *yaml.Node) {
			d.strs(v, pos("peers"), "peer names like pixel", func(_ int, s string, line int) {
				if err := wg.CheckPeerName(s); err != nil {
					d.failErr(line, err, "wireguard.peers: %v", strings.TrimPrefix(err.Error(), "wg: "))
					return
				}
				w.Peers = append(w.Peers, s)
			})
		},
		"endpoint": func(_, v *yaml.Node) {
			if s, ok := d.scalar(v, pos("endpoint"), "HOST:PORT"); ok {
				if err := CheckWGEndpoint(s); err != nil {
					d.failErr(deref(v).Line, err, "wireguard.endpoint %v", err)
					return
				}
				w.Endpoint = s
			}
		},
		"state":  func(_, v *yaml.Node) { d.str(v, pos("state"), &w.State, pos("state")) },
		"qr-png": func(_, v *yaml.Node) { d.str(v, pos("qr-png"), &w.QRPNG, pos("qr-png")) },
		"qr":     func(_, v *yaml.Node) { d.boolean(v, pos("qr"), func(b bool) { w.QR = b }, pos("qr")) },
		"range": func(_, v *yaml.Node) {
			d.strs(v, pos("range"), "prefixes like 10.7.0.0/24 and fd07::/64", func(_ int, s string, line int) {
				if err := w.SetWGRange(s); err != nil {
					d.failErr(line, err, "wireguard.range %v", err)
				}
			})
		},
		"mtu": func(_, v *yaml.Node) {
			d.integer(v, pos("mtu"), 1280, MaxMTU, func(n int64) { w.MTU = int(n) }, pos("mtu"))
		},
		"block-quic": func(_, v *yaml.Node) {
			d.boolean(v, pos("block-quic"), func(b bool) { w.BlockQUIC = b }, pos("block-quic"))
		},
		"block-dot": func(_, v *yaml.Node) {
			d.boolean(v, pos("block-dot"), func(b bool) { w.BlockDoT = b }, pos("block-dot"))
		},
		"pcap":       func(_, v *yaml.Node) { d.str(v, pos("pcap"), &w.Pcap, pos("pcap")) },
		"pcap-peers": func(_, v *yaml.Node) { d.str(v, pos("pcap-peers"), &w.PcapPeers, pos("pcap-peers")) },
	}
	hints := map[string]string{
		"peer":        `did you mean "peers"? it is a list`,
		"port":        `write it in listen, like listen: ":51820"`,
		"private-key": "keys live in the state file (state:), made on first use",
		"allowed-ips": "every peer sends everything into the tunnel (0.0.0.0/0, ::/0)",
	}
	d.mapping(n, "wireguard", fields, hints)
}
