package tun

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

// Open opens the TUN device described by cfg. With cfg.FD >= 0 it adopts the
// descriptor and changes nothing about the interface; otherwise it creates
// (or attaches to) cfg.Name, then sets MTU, addresses and link-up through
// netlink. ctx bounds nothing long today but is checked before each step.
func Open(ctx context.Context, cfg Config) (*Device, error) {
	log := discardIfNil(cfg.Logger)
	if cfg.FD >= 0 {
		return adopt(ctx, cfg, log)
	}
	if cfg.FD != NoFD {
		return nil, fmt.Errorf("tun: invalid descriptor %d (use -1 to create by name)", cfg.FD)
	}
	mtu, err := cfg.checkCreate()
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("tun: netlink: %w", err)
	}
	defer nl.Close()

	existed := false
	if cfg.Name != "" {
		if _, err := nl.LinkByName(cfg.Name); err == nil {
			existed = true
		}
	}

	dev, err := create(cfg.Name, cfg.Offload)
	if err != nil {
		return nil, fmt.Errorf("tun: create %q: %w", cfg.Name, err)
	}
	name, err := dev.Name()
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("tun: device name: %w", err)
	}
	d := &Device{dev: dev, name: name, created: !existed, log: log}
	d.setVnet(dev)
	d.gone = goneProbe(dev)
	d.rfile = devFile(dev)
	if err := d.configure(ctx, nl, cfg.Addrs, mtu); err != nil {
		d.Close()
		return nil, err
	}
	if d.created {
		d.closeHook = func() error { return removeIfStillThere(name, d.index) }
	}
	log.Debug("tun opened", "name", name, "index", d.index, "created", d.created, "mtu", mtu,
		"batch", dev.BatchSize(), "addrs", cfg.Addrs)
	return d, nil
}

// checkCreate validates the parts of cfg that creating a device uses and
// returns the MTU to set.
func (cfg Config) checkCreate() (int, error) {
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = DefaultMTU
	}
	if mtu < 68 || mtu > 65535 {
		return 0, fmt.Errorf("tun: MTU %d out of range 68..65535", mtu)
	}
	if len(cfg.Name) >= unix.IFNAMSIZ {
		return 0, fmt.Errorf("tun: name %q longer than %d bytes", cfg.Name, unix.IFNAMSIZ-1)
	}
	for _, p := range cfg.Addrs {
		if !p.IsValid() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
			return 0, fmt.Errorf("tun: invalid address prefix %v", p)
		}
	}
	return mtu, nil
}

// create opens /dev/net/tun for name, with IFF_TUN|IFF_NO_PI, and
// IFF_VNET_HDR when offload is set (wireguard-go then turns on TSO and
// checksum offload, and USO when the kernel has it; without it, one packet
// a call and no offloads). It wraps the descriptor with wireguard-go's
// unmonitored constructor: CreateTUN and CreateTUNFromFile also start two
// goroutines for the device's Events channel, which nothing here reads: a
// netlink listener (with its own socket) and an up/down probe that writes
// to the device and wakes every second for as long as it is open. Their
// stacks, their wakeups, and the code and tables the collector reads for
// their frames are all that would come of them. The MTU is set by
// configure, through netlink.
func create(name string, offload bool) (wgtun.Device, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if offload {
		flags |= unix.IFF_VNET_HDR
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF: %w", err)
	}
	// Non-blocking before the descriptor is wrapped in an *os.File, so it
	// joins the netpoller and Close unblocks a pending Read. Past this
	// point the file owns the descriptor (and closes it when collected).
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	dev, _, err := wgtun.CreateUnmonitoredTUNFromFD(fd)
	if err != nil {
		return nil, err
	}
	return dev, nil
}

func (d *Device) configure(ctx context.Context, nl *netlink.Handle, addrs []netip.Prefix, mtu int) error {
	link, err := nl.LinkByName(d.name)
	if err != nil {
		return fmt.Errorf("tun: find link %s: %w", d.name, err)
	}
	d.index = link.Attrs().Index
	if link.Attrs().MTU != mtu {
		if err := nl.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("tun: set MTU %d on %s: %w", mtu, d.name, err)
		}
	}
	for _, p := range addrs {
		if err := ctx.Err(); err != nil {
			return err
		}
		a := &netlink.Addr{IPNet: prefixToIPNet(p)}
		if p.Addr().Is6() {
			// Without nodad the address stays "tentative" for about a second
			// and the kernel refuses to use it as a source.
			a.Flags = unix.IFA_F_NODAD
		}
		if err := nl.AddrReplace(link, a); err != nil {
			return fmt.Errorf("tun: add address %v to %s: %w", p, d.name, err)
		}
	}
	if err := nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("tun: set %s up: %w", d.name, err)
	}
	return nil
}

// removeIfStillThere runs after the descriptor is closed. A non-persistent
// TUN disappears with its last descriptor; if ours somehow survived (someone
// made it persistent) delete it, so "created by us" really means "gone after
// Close".
func removeIfStillThere(name string, index int) error {
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("tun: netlink: %w", err)
	}
	defer nl.Close()
	link, err := nl.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("tun: look up %s after close: %w", name, err)
	}
	if link.Attrs().Index != index {
		return nil // a different interface took the name meanwhile
	}
	if err := nl.LinkDel(link); err != nil {
		return fmt.Errorf("tun: delete %s: %w", name, err)
	}
	return nil
}

// adopt wraps an open TUN descriptor without changing the interface.
func adopt(ctx context.Context, cfg Config, log *slog.Logger) (*Device, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// Check it really is a TUN before wireguard sets O_NONBLOCK on it and
	// wraps it in an *os.File (which would close it on garbage collection).
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return nil, err
	}
	if err := unix.IoctlIfreq(cfg.FD, unix.TUNGETIFF, ifr); err != nil {
		return nil, fmt.Errorf("tun: descriptor %d is not a TUN device: %w", cfg.FD, err)
	}
	if flags := ifr.Uint16(); flags&unix.IFF_TUN == 0 {
		return nil, fmt.Errorf("tun: descriptor %d is a TAP device, need TUN", cfg.FD)
	}
	// The unmonitored variant does not set the MTU (CreateTUNFromFile does)
	// and starts no netlink listener: an adopted device is left as it is.
	dev, name, err := wgtun.CreateUnmonitoredTUNFromFD(cfg.FD)
	if err != nil {
		return nil, fmt.Errorf("tun: adopt descriptor %d: %w", cfg.FD, err)
	}
	d := &Device{dev: dev, name: name, adopted: true, log: log}
	d.setVnet(dev)
	d.gone = goneProbe(dev)
	d.rfile = devFile(dev)
	if iface, err := net.InterfaceByName(name); err == nil {
		d.index = iface.Index
	}
	log.Debug("tun adopted", "fd", cfg.FD, "name", name, "batch", dev.BatchSize())
	return d, nil
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// devFile is the device's descriptor as an *os.File, nil when it has none.
func devFile(dev wgtun.Device) *os.File {
	if f, ok := dev.(interface{ File() *os.File }); ok {
		return f.File()
	}
	return nil
}

// goneProbe returns a check that the descriptor still has an interface:
// TUNGETIFF fails (EBADFD) once the interface was deleted. nil when the
// device has no descriptor to ask.
func goneProbe(dev wgtun.Device) func() bool {
	fd, ok := dev.(interface{ File() *os.File })
	if !ok {
		return nil
	}
	f := fd.File()
	return func() bool {
		_, err := tunFlags(f)
		return err != nil
	}
}

// setVnet keeps the device's descriptor for WriteGSO and for reading with
// the virtio header when it was opened with IFF_VNET_HDR (wireguard-go's
// CreateTUN, or an adopted descriptor opened that way).
func (d *Device) setVnet(dev wgtun.Device) {
	fd, ok := dev.(interface{ File() *os.File })
	if !ok {
		return
	}
	f := fd.File()
	if flags, err := tunFlags(f); err != nil || flags&unix.IFF_VNET_HDR == 0 {
		return
	}
	d.vnet = newVnetFile(f)
	d.readBuf = make([]byte, VnetHdrLen+65535)
}

// tunFlags asks the TUN descriptor for its interface flags (TUNGETIFF).
func tunFlags(f *os.File) (uint16, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var flags uint16
	var ioErr error
	if err := rc.Control(func(fd uintptr) {
		ifr, err := unix.NewIfreq("")
		if err != nil {
			ioErr = err
			return
		}
		if ioErr = unix.IoctlIfreq(int(fd), unix.TUNGETIFF, ifr); ioErr == nil {
			flags = ifr.Uint16()
		}
	}); err != nil {
		return 0, err
	}
	return flags, ioErr
}

// ReadWaits implements stack.WaitCountingDevice: how many reads so far
// found no packet and waited in the runtime poller. The count is kept
// only with a virtio header on a non-blocking descriptor (reads through
// vnetFile); ok is false otherwise.
func (d *Device) ReadWaits() (n uint64, ok bool) {
	if v, isVnet := d.vnet.(vnetFile); isVnet && v.waits != nil {
		return v.waits.Load(), true
	}
	return 0, false
}

// vnetFile reports a descriptor whose interface is gone (EBADFD) as closed,
// as wireguard-go's Read and Write do.
//
// When the descriptor is non-blocking (wireguard-go's CreateTUN makes it
// so), it reads and writes with raw system calls (rawRead, rawWrite)
// through the runtime poller, waiting only when nothing is there to read.
// A system call announced to the scheduler (os.File's) wakes the runtime's
// sysmon thread whenever it had gone to sleep because every P was idle,
// which a TUN program between two packets of a request/response exchange
// always is: with the relay's sockets read and written the same way
// (internal/relay), that was about a third of tunsocks' context switches
// per 1-byte round trip. A blocking descriptor (an adopted one may be)
// keeps os.File's calls: a raw one would hold its thread and P.
//
// Writes larger than rawWriteMax keep os.File's call too: the kernel
// delivers a written packet in the writer's system call (up to 64 KiB of
// TCP segment into the app's socket), and such a call is long enough for
// the scheduler to want its P back.
type vnetFile struct {
	f  *os.File
	rc syscall.RawConn // nil: use f
	// waits counts the reads that found nothing and waited in the
	// poller (with rc; see Device.ReadWaits).
	waits *atomic.Uint64
	// vec is Writev's state (with rc).
	vec *vecWriter
	// rop and wop are the raw calls reads and writes reuse (with rc).
	rop, wop *rawCall
}

// vecWriter is what Writev needs for one writev(2), kept from call to
// call: a download writes a segment this way every ~64 KiB, and
// unix.Writev allocated its iovecs, and the callback its closure, every
// time.
type vecWriter struct {
	mu    sync.Mutex
	iov   []unix.Iovec
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool // write, made once
}

// write is the rc.Write callback: one writev of iov, false to wait on
// EAGAIN.
func (w *vecWriter) write(fd uintptr) bool {
	for {
		r, _, e := syscall.Syscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(unsafe.SliceData(w.iov))), uintptr(len(w.iov)))
		if e == syscall.EINTR {
			continue
		}
		if e == syscall.EAGAIN {
			return false
		}
		w.n, w.errno = int(r), e
		return true
	}
}

// rawWriteMax is the largest write vnetFile makes with a raw system call:
// a round trip's ACKs and small segments, not bulk transfer's.
const rawWriteMax = 4 << 10

func newVnetFile(f *os.File) vnetFile {
	v := vnetFile{f: f}
	rc, err := f.SyscallConn()
	if err != nil {
		return v
	}
	nonblock := false
	if rc.Control(func(fd uintptr) {
		fl, err := unix.FcntlInt(fd, unix.F_GETFL, 0)
		nonblock = err == nil && fl&unix.O_NONBLOCK != 0
	}) == nil && nonblock {
		v.rc = rc
		v.waits = new(atomic.Uint64)
		v.vec = new(vecWriter)
		v.vec.fn = v.vec.write
		v.rop, v.wop = newRawCall(), newRawCall()
	}
	return v
}

func (v vnetFile) Read(b []byte) (int, error) {
	var n int
	var err error
	if v.rc != nil {
		n, err = v.raw(v.rc.Read, v.rop, "read", unix.SYS_READ, b, v.waits)
		if err == nil && n == 0 && len(b) > 0 {
			err = io.EOF
		}
	} else {
		n, err = v.f.Read(b)
	}
	if errors.Is(err, unix.EBADFD) {
		return n, os.ErrClosed
	}
	return n, err
}

func (v vnetFile) Write(b []byte) (int, error) {
	var n int
	var err error
	if v.rc != nil && len(b) <= rawWriteMax {
		n, err = v.raw(v.rc.Write, v.wop, "write", unix.SYS_WRITE, b, nil)
	} else {
		n, err = v.f.Write(b)
	}
	if errors.Is(err, unix.EBADFD) {
		return n, os.ErrClosed
	}
	return n, err
}

// Writev writes the concatenation of bufs as one packet (writev(2)), told
// to the scheduler (bulk: a segment of up to 64 KiB).
func (v vnetFile) Writev(bufs [][]byte) (int, error) {
	if v.rc == nil {
		var joined []byte
		for _, b := range bufs {
			joined = append(joined, b...)
		}
		return v.Write(joined)
	}
	w := v.vec
	w.mu.Lock()
	for _, b := range bufs {
		if len(b) > 0 {
			w.iov = append(w.iov, unix.Iovec{Base: unsafe.SliceData(b)})
			w.iov[len(w.iov)-1].SetLen(len(b))
		}
	}
	w.n, w.errno = 0, 0
	err := v.rc.Write(w.fn)
	runtime.KeepAlive(bufs)
	n := w.n
	var werr error
	if w.errno != 0 {
		werr = w.errno
	}
	clear(w.iov)
	w.iov = w.iov[:0]
	w.mu.Unlock()
	switch {
	case err != nil:
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return 0, &os.PathError{Op: "writev", Path: v.f.Name(), Err: err}
		}
		return 0, &os.PathError{Op: "writev", Path: v.f.Name(), Err: fmt.Errorf("%w (%v)", os.ErrClosed, err)}
	case werr != nil:
		if errors.Is(werr, unix.EBADFD) {
			return 0, os.ErrClosed
		}
		return 0, &os.PathError{Op: "writev", Path: v.f.Name(), Err: werr}
	}
	return n, nil
}

// raw makes one read or write (trap) of b with syscall.RawSyscall inside
// wait (rc.Read or rc.Write), which waits on the poller while the call
// would block. Errors come back as os.File's would: the system call's
// as an *os.PathError, a closed file as os.ErrClosed. waits, when not
// nil, counts the calls that had to wait. It makes the call with c when
// no other goroutine is using c, else with a new rawCall.
func (v vnetFile) raw(wait func(func(uintptr) bool) error, c *rawCall, op string, trap uintptr, b []byte, waits *atomic.Uint64) (int, error) {
	if c == nil || !c.busy.CompareAndSwap(false, true) {
		c = newRawCall()
		c.busy.Store(true)
	}
	c.trap, c.b, c.waits, c.n, c.errno = trap, b, waits, 0, 0
	err := wait(c.fn)
	n, errno := c.n, c.errno
	c.b, c.waits = nil, nil
	c.busy.Store(false)
	runtime.KeepAlive(b)
	switch {
	case err != nil:
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return 0, &os.PathError{Op: op, Path: v.f.Name(), Err: err}
		}
		// The descriptor was closed ("use of closed file").
		return 0, &os.PathError{Op: op, Path: v.f.Name(), Err: fmt.Errorf("%w (%v)", os.ErrClosed, err)}
	case errno != 0:
		return 0, &os.PathError{Op: op, Path: v.f.Name(), Err: errno}
	}
	return n, nil
}

// rawCall is one raw read or write through the runtime poller (vnetFile.raw)
// with its callback made once: a closure made for each call escapes
// through the RawConn and cost three allocations a call (it and the two
// results it sets), a read and a write or two per packet of a round trip.
// busy: a goroutine is using it (the device's reader, or a writer).
type rawCall struct {
	busy  atomic.Bool
	fn    func(uintptr) bool // c.call
	trap  uintptr
	b     []byte
	waits *atomic.Uint64
	n     int
	errno syscall.Errno
}

func newRawCall() *rawCall {
	c := new(rawCall)
	c.fn = c.call
	return c
}

func (c *rawCall) call(fd uintptr) bool {
	for {
		r, _, e := syscall.RawSyscall(c.trap, fd, uintptr(unsafe.Pointer(unsafe.SliceData(c.b))), uintptr(len(c.b)))
		if e == syscall.EINTR {
			continue
		}
		if e == syscall.EAGAIN {
			if c.waits != nil {
				c.waits.Add(1)
			}
			return false
		}
		c.n, c.errno = int(r), e
		return true
	}
}
