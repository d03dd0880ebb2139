package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tunsocks/tunsocks/tun"
)

// setup builds the inside of the sandbox, in the init: private mounts, the
// network (lo, the TUN, default routes), a sock_diag socket of the
// namespace, the hidden resolver sockets, resolv.conf and /proc. It returns
// the TUN's and the sock_diag socket's descriptors, the TUN's name, and
// notes on what it skipped.
func setup(s setupMsg) (tunFD, diagFD int, name string, notes []string, err error) {
	// First of all, so that nothing mounted here shows up outside (with
	// shared propagation, as systemd sets up /, it would).
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return -1, -1, "", nil, fmt.Errorf("sandbox: making mounts private: %w", err)
	}
	f, name, err := setupNetwork(s.Tun)
	if err != nil {
		return -1, -1, "", nil, err
	}
	diagFD, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		f.Close()
		return -1, -1, "", nil, fmt.Errorf("sandbox: sock_diag socket: %w", err)
	}
	notes, err = setupMounts(s)
	if err != nil {
		f.Close()
		unix.Close(diagFD)
		return -1, -1, "", nil, err
	}
	// The descriptor leaves as a raw number; f must not close it when it
	// is collected.
	tunFD, err = unix.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		unix.Close(diagFD)
		return -1, -1, "", nil, fmt.Errorf("sandbox: dup TUN descriptor: %w", err)
	}
	unix.CloseOnExec(tunFD)
	return tunFD, diagFD, name, notes, nil
}

// setupNetwork brings lo up and creates the TUN with its addresses and a
// default route for each address family it has.
func setupNetwork(ts TunSpec) (*os.File, string, error) {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, "", fmt.Errorf("sandbox: find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return nil, "", fmt.Errorf("sandbox: set lo up: %w", err)
	}
	f, name, err := tun.CreateFD(context.Background(), tun.Config{
		FD: tun.NoFD, Name: ts.Name, Addrs: ts.Addrs, MTU: ts.MTU, Offload: ts.Offload,
	})
	if err != nil {
		return nil, "", fmt.Errorf("sandbox: %w", err)
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		f.Close()
		return nil, "", fmt.Errorf("sandbox: find %s: %w", name, err)
	}
	var v4, v6 bool
	for _, p := range ts.Addrs {
		if p.Addr().Is4() {
			v4 = true
		} else {
			v6 = true
		}
	}
	for _, r := range []struct {
		on  bool
		dst *net.IPNet
	}{
		{v4, &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}},
		{v6, &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}},
	} {
		if !r.on {
			continue
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: r.dst, Scope: netlink.SCOPE_UNIVERSE}); err != nil {
			f.Close()
			return nil, "", fmt.Errorf("sandbox: default route %v via %s: %w", r.dst, name, err)
		}
	}
	return f, name, nil
}

// setupMounts hides the masked directories, points resolv.conf at our DNS
// and mounts a /proc of the new PID namespace.
func setupMounts(s setupMsg) (notes []string, err error) {
	masked := map[string]bool{}
	for _, dir := range s.Mask {
		real, err := filepath.EvalSymlinks(dir)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("sandbox: hiding %s: %w", dir, err)
		}
		if masked[real] {
			continue
		}
		if fi, err := os.Stat(real); err != nil || !fi.IsDir() {
			notes = append(notes, fmt.Sprintf("not hiding %s: not a directory", dir))
			continue
		}
		if err := unix.Mount("tmpfs", real, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0755,size=64k"); err != nil {
			return nil, fmt.Errorf("sandbox: hiding %s under a tmpfs: %w", real, err)
		}
		masked[real] = true
	}
	if s.ResolvConf != "" {
		path := s.ResolvPath
		if path == "" {
			path = "/etc/resolv.conf"
		}
		if err := pointResolvConf(path, s.ResolvConf, masked); err != nil {
			return nil, err
		}
	}
	// A /proc that shows the new PID namespace. Mounting one can be
	// refused in a user namespace when the host's /proc is partly covered
	// (some container runtimes do that); the command then sees the host's
	// process list, which changes nothing about its network.
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		notes = append(notes, fmt.Sprintf("no /proc of its own (mount: %v)", err))
	}
	return notes, nil
}

// pointResolvConf makes path (through any symlinks) read content: written
// into a masked tmpfs when the file lives there (systemd-resolved's
// stub-resolv.conf), else bind-mounted read-only over the file.
func pointResolvConf(path, content string, masked map[string]bool) error {
	target, err := finalPath(path)
	if err != nil {
		return fmt.Errorf("sandbox: resolving %s: %w", path, err)
	}
	for dir := filepath.Dir(target); ; dir = filepath.Dir(dir) {
		if masked[dir] {
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return fmt.Errorf("sandbox: %w", err)
			}
			if err := os.WriteFile(target, []byte(content), 0o644); err != nil {
				return fmt.Errorf("sandbox: writing %s: %w", target, err)
			}
			return nil
		}
		if dir == "/" || dir == "." {
			break
		}
	}
	fi, err := os.Stat(target)
	if err != nil {
		return fmt.Errorf("sandbox: %s leads to %s: %w; no way to point lookups at tunsocks", path, target, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("sandbox: %s leads to %s, which is not a regular file; no way to point lookups at tunsocks", path, target)
	}
	// The file to bind comes from a private tmpfs that is mounted for a
	// moment over /proc (which exists everywhere and gets a mount of its
	// own next anyway), then detached: the bind mount keeps it alive and
	// nothing of it is ever visible outside.
	const stage = "/proc"
	if err := unix.Mount("tmpfs", stage, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0755,size=64k"); err != nil {
		return fmt.Errorf("sandbox: staging resolv.conf: %w", err)
	}
	defer unix.Unmount(stage, unix.MNT_DETACH)
	staged := filepath.Join(stage, "resolv.conf")
	if err := os.WriteFile(staged, []byte(content), 0o644); err != nil {
		return fmt.Errorf("sandbox: staging resolv.conf: %w", err)
	}
	if err := unix.Mount(staged, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("sandbox: bind-mounting resolv.conf over %s: %w", target, err)
	}
	// Read-only, so that the command cannot redirect its own lookups.
	if err := unix.Mount("", target, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("sandbox: making %s read-only: %w", target, err)
	}
	return nil
}

// finalPath follows path's symlinks, its directories' included, to the path
// of the file they lead to, which need not exist.
func finalPath(path string) (string, error) {
	p := filepath.Clean(path)
	for range 40 {
		if dir, err := filepath.EvalSymlinks(filepath.Dir(p)); err == nil {
			p = filepath.Join(dir, filepath.Base(p))
		}
		fi, err := os.Lstat(p)
		if errors.Is(err, os.ErrNotExist) {
			return p, nil
		}
		if err != nil {
			return "", err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			return p, nil
		}
		l, err := os.Readlink(p)
		if err != nil {
			return "", err
		}
		if !filepath.IsAbs(l) {
			l = filepath.Join(filepath.Dir(p), l)
		}
		p = filepath.Clean(l)
	}
	return "", fmt.Errorf("%s: too many levels of symbolic links", path)
}
