package tun

import (
	"context"
	"fmt"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// CreateFD creates a TUN device in the calling thread's network namespace,
// configures it as Open does (MTU, addresses, link up) and returns its
// descriptor and name instead of a Device, for a process that creates the
// device in one namespace and hands the descriptor to another (the exec
// sandbox creates it inside its namespace and passes it out over a Unix
// socket). cfg.FD must be NoFD. The descriptor is close-on-exec and was
// opened with IFF_VNET_HDR when cfg.Offload is set; Open with Config.FD
// adopts it and negotiates the offloads then. The device disappears when
// the last copy of the descriptor is closed.
func CreateFD(ctx context.Context, cfg Config) (*os.File, string, error) {
	if cfg.FD != NoFD {
		return nil, "", fmt.Errorf("tun: CreateFD with a descriptor (%d) to adopt; use Open", cfg.FD)
	}
	mtu, err := cfg.checkCreate()
	if err != nil {
		return nil, "", err
	}
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, "", fmt.Errorf("tun: open /dev/net/tun: %w", err)
	}
	f := os.NewFile(uintptr(fd), "/dev/net/tun")
	ifr, err := unix.NewIfreq(cfg.Name)
	if err != nil {
		f.Close()
		return nil, "", fmt.Errorf("tun: name %q: %w", cfg.Name, err)
	}
	flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if cfg.Offload {
		flags |= unix.IFF_VNET_HDR
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		f.Close()
		return nil, "", fmt.Errorf("tun: create %q (TUNSETIFF): %w", cfg.Name, err)
	}
	name := ifr.Name()
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		f.Close()
		return nil, "", fmt.Errorf("tun: netlink: %w", err)
	}
	defer nl.Close()
	d := &Device{name: name}
	if err := d.configure(ctx, nl, cfg.Addrs, mtu); err != nil {
		f.Close()
		return nil, "", err
	}
	return f, name, nil
}
