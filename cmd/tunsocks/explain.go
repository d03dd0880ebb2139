package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/tunsocks/tunsocks/config"
	"github.com/tunsocks/tunsocks/internal/direct"
	"github.com/tunsocks/tunsocks/router"
	"github.com/tunsocks/tunsocks/rules"
	"github.com/tunsocks/tunsocks/sniff"
	"github.com/tunsocks/tunsocks/socks"
)

func explainCommand() *cli.Command {
	return &cli.Command{
		Name:      "explain",
		Usage:     "show which rule and outbound a flow to HOST:PORT would take (--route: which routing rule of this host catches it)",
		ArgsUsage: "HOST:PORT",
		Description: "Reads the config like 'tunsocks run' does and prints the rule that matches a flow to\n" +
			"HOST:PORT, why, and the outbound (and chain) that would carry it. Nothing is dialed.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "YAML config file (not needed with --route)", EnvVars: []string{"TUNSOCKS_CONFIG"}},
			&cli.StringFlag{Name: "route", Usage: "HOST:PORT: which of the policy rules a running --auto-route installed catches a flow from this host"},
			&cli.StringFlag{Name: "tun", Usage: "with --route: the run that serves this TUN device (when several run)"},
			stateDirFlag(),
			&cli.StringFlag{Name: "network", Value: "tcp", Usage: "tcp or udp"},
			&cli.StringFlag{Name: "process", Usage: "pretend the flow comes from this executable (name or path)"},
			&cli.IntFlag{Name: "uid", Value: -1, Usage: "pretend the flow comes from this user id"},
			&cli.StringFlag{Name: "src", Value: "198.18.0.1:40000", Usage: "source address:port of the flow"},
			&cli.StringFlag{Name: "in-type", Value: rules.InTUN, Usage: "the inbound the flow comes through: tun, wireguard, exec, gateway or socks"},
			&cli.StringFlag{Name: "in-name", Usage: "the inbound's name (default: the config's TUN name for tun, wg for wireguard, else the type)"},
			&cli.StringFlag{Name: "in-user", Usage: "the user behind the inbound (a WireGuard peer, a SOCKS user)"},
			&cli.BoolFlag{Name: "json", Usage: "print the result as JSON (the shape of the API's /connections/{id}/explain decisions)"},
			&cli.StringFlag{Name: "sni", Usage: "pretend the flow to the address HOST told this name in its first bytes (TLS SNI, HTTP Host, QUIC)"},
		},
		Action: func(c *cli.Context) error {
			if r := c.String("route"); r != "" {
				return explainRoute(c, r)
			}
			if !c.IsSet("config") {
				return usagef("explain needs --config FILE (or --route HOST:PORT for this host's routing)")
			}
			if c.NArg() != 1 {
				return usagef("explain takes one HOST:PORT, like example.com:443 or 10.0.0.1:22")
			}
			cfg, err := config.Load(c.String("config"))
			if err != nil {
				return usageError{err}
			}
			network := c.String("network")
			if network != "tcp" && network != "udp" {
				return usagef("--network %q: want tcp or udp", network)
			}
			src, err := netip.ParseAddrPort(c.String("src"))
			if err != nil {
				return usagef("--src %q: want an address:port like 192.168.1.5:40000", c.String("src"))
			}
			m, err := explainMetadata(c.Args().First(), network, src)
			if err != nil {
				return err
			}
			m.UID = c.Int("uid")
			if p := c.String("process"); p != "" {
				m.Process = p
			}
			if m.InType, m.InName, m.InUser, err = explainInbound(c, cfg); err != nil {
				return err
			}
			sni := c.String("sni")
			if sni != "" {
				name, ok := sniff.Name(sni)
				switch {
				case !ok:
					return usagef("--sni %q: want a DNS name like example.com", sni)
				case m.Host != "":
					return usagef("--sni names what a flow to an address told; give HOST as an address like 203.0.113.7, not the name %q", m.Host)
				}
				sni = name
			}
			// explain describes a hypothetical flow: no socket to look up
			// a process for, and no DNS to build.
			w, err := wire(cfg, &direct.Dialer{}, discardLogger(), wireOptions{})
			if err != nil {
				return err
			}
			// A flow to an address: would it wait for its name? Only then
			// does a sniffed name (--sni) take part.
			sniffed, wait := false, ""
			if m.Host == "" {
				sniffed, wait = w.sniffWant(m)
				if sni != "" && sniffed {
					m.Host, m.RealDst = sni, true
				} else if sni != "" {
					wait += "; so --sni changes nothing"
				}
			}
			d, mt := w.policy.Match(m)
			out := c.App.Writer
			if c.Bool("json") {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(explained{Flow: explainedFlowOf(m, c.Args().First()), explainedDecision: explainDecision(cfg, d, &mt)})
			}
			fmt.Fprintf(out, "flow:     %s %s -> %s", network, m.Src, c.Args().First())
			if m.Process != "" {
				fmt.Fprintf(out, " from %s", m.Process)
			}
			if c.IsSet("in-type") || c.IsSet("in-name") || c.IsSet("in-user") {
				fmt.Fprintf(out, " in %s %s", m.InType, m.InName)
				if m.InUser != "" {
					fmt.Fprintf(out, " (user %s)", m.InUser)
				}
			}
			if m.RealDst {
				fmt.Fprintf(out, ", sniffed name %s", m.Host)
			}
			fmt.Fprintln(out)
			if wait != "" {
				fmt.Fprintf(out, "sniff:    %s\n", wait)
			}
			if w.policy.HasRules() {
				fmt.Fprintf(out, "rule:     %s\n", mt)
			} else {
				fmt.Fprintf(out, "rule:     none configured; every flow takes the default proxy\n")
			}
			fmt.Fprintf(out, "outbound: %s\n", describe(cfg, d))
			if sniffed {
				fmt.Fprintf(out, "dial:     %s\n", w.sniffDial(m, d))
			}
			return nil
		},
	}
}

// explainMetadata turns HOST:PORT into the rules' view of a flow.
func explainMetadata(target, network string, src netip.AddrPort) (*rules.Metadata, error) {
	a, err := socks.ParseAddr(target)
	if err != nil {
		var ae *net.AddrError // no host:port at all
		if errors.As(err, &ae) {
			return nil, usagef("%q: want HOST:PORT, like example.com:443 or [2001:db8::1]:22", target)
		}
		return nil, usageError{err} // names the port, the name or the zone that is wrong
	}
	m := &rules.Metadata{Network: network, Src: src, UID: -1}
	if a.Name == "" {
		m.Dst = netip.AddrPortFrom(a.IP, a.Port)
	} else {
		m.Host = strings.ToLower(strings.TrimSuffix(a.Name, "."))
		m.Dst = netip.AddrPortFrom(netip.Addr{}, a.Port)
	}
	return m, nil
}

// explainInbound is the inbound the flags describe.
func explainInbound(c *cli.Context, cfg *config.Config) (typ, name, user string, err error) {
	typ = strings.ToLower(c.String("in-type"))
	switch typ {
	case rules.InTUN, rules.InWireGuard, rules.InExec, rules.InGateway, rules.InSocks:
	default:
		return "", "", "", usagef("--in-type %q: want tun, wireguard, exec, gateway or socks", c.String("in-type"))
	}
	name = c.String("in-name")
	if name == "" {
		switch typ {
		case rules.InTUN:
			name = cfg.Tun.Name
		case rules.InWireGuard:
			name = "wg"
		default:
			name = typ
		}
	}
	return typ, name, c.String("in-user"), nil
}

// describe names the outbound of a decision, with a chain's hops.
func describe(cfg *config.Config, d router.Decision) string {
	switch d.Action {
	case router.Reject:
		return "REJECT (the app gets a TCP reset at once; UDP is dropped)"
	case router.RejectDrop:
		return "REJECT-DROP (dropped silently)"
	}
	name := d.Outbound.Name()
	if name == "DIRECT" {
		return "DIRECT (dialed from this host, bypassing the TUN)"
	}
	hops, err := cfg.Hops(name)
	if err != nil || len(hops) == 0 {
		return name
	}
	parts := make([]string, len(hops))
	for i, u := range hops {
		parts[i] = u.Redacted()
	}
	if len(hops) == 1 {
		return fmt.Sprintf("%s (%s)", name, parts[0])
	}
	return fmt.Sprintf("%s (chain: %s)", name, strings.Join(parts, " -> "))
}
