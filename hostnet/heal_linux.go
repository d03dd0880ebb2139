package hostnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Self-healing: another program may delete tunsocks' rules or its table's
// routes (systemd-networkd deletes rules it does not know on restart). The
// healer listens to the kernel's rule and route notifications and puts
// missing objects back shortly after, at most healBurst times per
// healWindow, and warns once with the setting that stops networkd.
const (
	healDelay  = 200 * time.Millisecond // let a burst of deletions settle
	healPoll   = 2 * time.Second        // a check even without notification (lost messages)
	healBurst  = 10
	healWindow = 5 * time.Second
)

const networkdHint = "systemd-networkd removes routing rules it did not make when it restarts; " +
	"set ManageForeignRoutingPolicyRules=no and ManageForeignRoutes=no in /etc/systemd/networkd.conf [Network] to stop it"

// heal runs until ctx ends. opts is what was installed (for the nftables
// table); path is the state file, rewritten before a new object (a forward
// chain with a DROP policy that appeared since) is added.
func heal(ctx context.Context, st *State, opts *Options, path string, log *slog.Logger) {
	events := make(chan struct{}, 1)
	sock, err := nl.Subscribe(unix.NETLINK_ROUTE, unix.RTNLGRP_IPV4_RULE, unix.RTNLGRP_IPV6_RULE, unix.RTNLGRP_IPV4_ROUTE, unix.RTNLGRP_IPV6_ROUTE)
	if err != nil {
		log.Warn("self-healing: cannot watch routing rules; checking every "+healPoll.String(), "err", err)
	} else {
		go func() {
			<-ctx.Done()
			sock.Close()
		}()
		go func() {
			for {
				msgs, _, err := sock.Receive()
				if ctx.Err() != nil {
					return
				}
				if err != nil {
					// ENOBUFS: messages were lost; a check finds what they said.
					select {
					case events <- struct{}{}:
					default:
					}
					if err == unix.ENOBUFS || err == unix.EAGAIN || err == unix.EINTR {
						continue
					}
					log.Warn("self-healing: rule notifications stopped; checking every "+healPoll.String(), "err", err)
					return
				}
				deleted := false
				for _, m := range msgs {
					deleted = deleted || m.Header.Type == unix.RTM_DELRULE || m.Header.Type == unix.RTM_DELROUTE
				}
				if deleted {
					select {
					case events <- struct{}{}:
					default:
					}
				}
			}
		}()
	}
	poll := time.NewTicker(healPoll)
	defer poll.Stop()
	var repairs []time.Time
	warned := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-events:
			select {
			case <-time.After(healDelay):
			case <-ctx.Done():
				return
			}
		case <-poll.C:
		}
		now := time.Now()
		for len(repairs) > 0 && now.Sub(repairs[0]) > healWindow {
			repairs = repairs[1:]
		}
		if len(repairs) >= healBurst {
			continue // rate-limited: try again at the next poll
		}
		fixed, err := repair(st)
		if more, nerr := repairNft(st, opts, path); len(more) > 0 || nerr != nil {
			fixed = append(fixed, more...)
			err = errors.Join(err, nerr)
		}
		if err != nil {
			log.Warn("self-healing failed", "err", err)
		}
		if len(fixed) == 0 {
			continue
		}
		repairs = append(repairs, now)
		if !warned {
			warned = true
			log.Warn("another program deleted tunsocks' routing; put back: "+fmt.Sprint(fixed), "hint", networkdHint)
		} else {
			log.Info("self-healing: put back", "objects", fixed)
		}
	}
}

// repair re-adds the rules and routes of st that are missing.
func repair(st *State) ([]string, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	var fixed []string
	present := map[string]bool{}
	for _, fam := range []int{4, 6} {
		rules, err := h.RuleList(family(fam))
		if err != nil {
			return nil, fmt.Errorf("list rules: %w", err)
		}
		for _, r := range rules {
			present[ruleFromNetlink(r).Key()] = true
		}
	}
	for _, r := range st.Rules {
		if present[r.Key()] {
			continue
		}
		if err := addRule(h, r); err != nil {
			return fixed, err
		}
		present[r.Key()] = true
		fixed = append(fixed, "rule "+r.String())
	}
	for _, r := range st.Routes {
		link, err := h.LinkByName(r.Dev)
		if err != nil {
			continue // the TUN is gone: the run is ending
		}
		routes, err := h.RouteListFiltered(family(r.Family), &netlink.Route{Table: r.Table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return fixed, fmt.Errorf("list routes: %w", err)
		}
		ok := false
		for _, rt := range routes {
			if rt.LinkIndex == link.Attrs().Index && (rt.Dst == nil || isDefault(rt.Dst.String())) {
				ok = true
			}
		}
		if ok {
			continue
		}
		if err := addRoute(h, r, link.Attrs().Index); err != nil {
			return fixed, err
		}
		fixed = append(fixed, fmt.Sprintf("route default dev %s table %d", r.Dev, r.Table))
	}
	return fixed, nil
}

func isDefault(s string) bool { return s == "0.0.0.0/0" || s == "::/0" }

// repairNft re-creates tunsocks' nftables table when it is gone (a
// firewall reload that flushes the ruleset), and in gateway mode puts the
// accept rules back into forward chains with a DROP policy, including
// ones that appeared since (Docker started later), recording those in the
// state file first.
func repairNft(st *State, opts *Options, path string) ([]string, error) {
	var fixed []string
	c, err := nftConn()
	if err != nil {
		return nil, err
	}
	if st.NftTable != "" {
		if _, err := c.ListTableOfFamily(st.NftTable, nftables.TableFamilyINet); err != nil {
			if !gone(err) {
				return nil, fmt.Errorf("list nftables table %s: %w", st.NftTable, err)
			}
			if err := installNft(opts); err != nil {
				return nil, err
			}
			fixed = append(fixed, "nftables table inet "+st.NftTable)
		}
	}
	if opts.Gateway == "" {
		return fixed, nil
	}
	drops, err := forwardDropChains()
	if err != nil {
		return fixed, err
	}
	var added []ChainRef
	for _, d := range drops {
		if !slices.Contains(st.Forward, d) {
			added = append(added, d)
		}
	}
	if len(added) > 0 {
		st.Forward = append(st.Forward, added...)
		st.FwdTag = opts.ForwardTag()
		if err := writeState(path, st); err != nil {
			return fixed, err
		}
	}
	for _, ref := range st.Forward {
		if !slices.Contains(drops, ref) {
			continue // the chain is gone, or no longer drops
		}
		n, err := countTagged(ref, st.FwdTag)
		if err != nil || n >= 2 {
			continue
		}
		if n > 0 {
			if err := deleteForwardAccept(ref, st.FwdTag); err != nil {
				return fixed, err
			}
		}
		if err := insertForwardAccept(ref, opts.Gateway, opts.Tun, st.FwdTag); err != nil {
			return fixed, err
		}
		fixed = append(fixed, "accept rules in "+ref.String())
	}
	return fixed, nil
}
