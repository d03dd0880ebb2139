package hostnet

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"

	"github.com/vishvananda/netlink"

	"github.com/tunsocks/tunsocks/procinfo"
)

// excludeLocalUpstreams finds, for each upstream on a loopback or local
// address, the process serving it (an ssh -D or Tor SOCKS port): its own
// connections must go direct, or they would come back into the TUN and
// loop. A non-root owner's uid is excluded; a root owner's cgroup, unless
// it is the root cgroup. Otherwise Install refuses with the flag that fixes
// it.
func excludeLocalUpstreams(nl *netlink.Handle, o *Options, upstreams []netip.AddrPort, log *slog.Logger) error {
	var local []netip.AddrPort
	for _, u := range upstreams {
		a := u.Addr().Unmap()
		if a.IsLoopback() || isLocalAddr(nl, a) {
			local = append(local, netip.AddrPortFrom(a, u.Port()))
		}
	}
	if len(local) == 0 {
		return nil
	}
	finder := procinfo.NewFinder(0)
	for _, u := range local {
		owner, err := finder.Owner("tcp", u)
		if err != nil && owner.UID < 0 {
			return fmt.Errorf("the upstream %s is on this host, but nothing listens there (%w): start it first, or pass --exclude-uid N for the user it runs as, so its own connections go direct", u, err)
		}
		who := fmt.Sprintf("pid %d (%s, uid %d)", owner.PID, owner.Path, owner.UID)
		if errors.Is(err, procinfo.ErrNoProcess) {
			who = fmt.Sprintf("uid %d", owner.UID)
		}
		if owner.PID == os.Getpid() {
			continue // tunsocks' own listener: its sockets are marked
		}
		uid := uint32(owner.UID)
		if slices.ContainsFunc(o.ExcludeUIDs, func(r UIDRange) bool { return r.Contains(uid) }) {
			log.Info("local upstream: its owner's uid is excluded already", "upstream", u, "owner", who)
			continue
		}
		if owner.UID != 0 {
			o.ExcludeUIDs = append(o.ExcludeUIDs, UIDRange{Start: uid, End: uid})
			log.Info(fmt.Sprintf("local upstream %s is served by %s: its connections go direct (as with --exclude-uid %d)", u, who, uid))
			continue
		}
		cg := ""
		if owner.PID > 0 {
			cg, err = procCgroup(owner.PID)
			if err != nil {
				cg = ""
			}
		}
		if cg == "" {
			return fmt.Errorf("the upstream %s is served by %s, which runs as root in the root cgroup: tunsocks cannot tell its connections from every other process's, and they would loop back into the TUN. "+
				"Run it as its own user, or in its own cgroup (e.g. systemd-run --scope), or pass --exclude-uid 0 to send every root process direct", u, who)
		}
		c, err := resolveCgroup(cg)
		if err != nil {
			return fmt.Errorf("the upstream %s is served by %s in cgroup %s: %w", u, who, cg, err)
		}
		o.ExcludeCgroups = append(o.ExcludeCgroups, c)
		log.Info(fmt.Sprintf("local upstream %s is served by %s: sockets of its cgroup /%s go direct", u, who, cg))
	}
	return nil
}

func isLocalAddr(nl *netlink.Handle, a netip.Addr) bool {
	addrs, err := nl.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return false
	}
	for _, x := range addrs {
		if b, ok := netip.AddrFromSlice(x.IP); ok && b.Unmap() == a {
			return true
		}
	}
	return false
}
