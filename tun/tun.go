// Package tun opens and configures the operating system's TUN device and
// exposes it as a batched packet device.
//
// The device is golang.zx2c4.com/wireguard/tun underneath. On Linux it
// negotiates IFF_VNET_HDR with the kernel and performs TSO splitting on Read
// and GRO coalescing on Write itself, so one Read may return many packets and
// one Write may turn many packets into a few large kernel writes.
package tun

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"time"

	wgtun "golang.zx2c4.com/wireguard/tun"

	"github.com/tunsocks/tunsocks/internal/memtrim"
	"github.com/tunsocks/tunsocks/stack"
)

// Headroom is the number of bytes a caller must reserve in front of every
// packet passed to Device.Read and Device.Write, i.e. the minimum offset.
//
// wireguard's Linux TUN with IFF_VNET_HDR writes a 10-byte virtio_net_hdr in
// front of every packet it hands to the kernel (Write returns "invalid
// offset" when offset < 10), and its GRO code clears and fills those bytes in
// place. Read does not strictly need the headroom (it copies out of its own
// buffer) but using the same offset for both directions keeps buffers
// interchangeable. 16 keeps the packet start 8-byte aligned.
const Headroom = 16

// BatchDevice is a packet device that moves several packets per call.
//
// Read fills bufs[i][offset:] with packets and sizes[i] with their lengths and
// returns how many it filled; len(sizes) must be >= len(bufs) and len(bufs)
// should be BatchSize(). Write sends bufs[i][offset:] for every i. Both may
// modify the bytes in front of offset. Packets are raw IPv4 or IPv6 without
// a link header.
type BatchDevice interface {
	Read(bufs [][]byte, sizes []int, offset int) (int, error)
	Write(bufs [][]byte, offset int) (int, error)
	BatchSize() int
	MTU() (int, error)
	Close() error
}

// Config says which TUN device to open and how to configure it.
type Config struct {
	// Name of the device to create or attach to. Empty lets the kernel
	// choose (tunN). Ignored when FD >= 0.
	Name string
	// FD, when >= 0, is an already open TUN descriptor to adopt (Android
	// VpnService, --tun-fd N). The device is then used as it is: its
	// addresses, routes, MTU and up-state are not touched, and Close closes
	// the descriptor but never deletes the interface. Set FD to NoFD (-1) to
	// create or attach by Name. Open takes ownership of the descriptor.
	FD int
	// Addrs are assigned to the device (IPv6 ones with nodad, so they are
	// usable at once). Existing addresses are kept.
	Addrs []netip.Prefix
	// MTU of the device; 0 means DefaultMTU.
	MTU int
	// Offload enables IFF_VNET_HDR (TSO on Read, GRO on Write, batches of
	// up to 128 packets). Without it every call moves one packet.
	// Ignored when FD >= 0: an adopted descriptor keeps the flags it was
	// opened with.
	Offload bool
	// Logger receives debug and warning lines; nil discards them.
	Logger *slog.Logger
}

// NoFD is the Config.FD value that means "create or attach by name".
const NoFD = -1

// DefaultMTU is used when Config.MTU is 0.
const DefaultMTU = 1500

// ErrUnsupported is returned by Open on systems where configuring a TUN
// device is not implemented.
var ErrUnsupported = errors.New("tun: not supported on this GOOS")

// Device is an open TUN device. It satisfies BatchDevice; Read and Write need
// an offset of at least Headroom.
type Device struct {
	dev     wgtun.Device
	name    string
	index   int
	created bool // we created the interface, so Close must make it disappear
	adopted bool // FD adoption: never touch the interface
	log     *slog.Logger

	closeOnce sync.Once
	closeErr  error
	closeHook func() error // OS specific cleanup after the descriptor is closed

	// gone, when set, reports whether the descriptor no longer has an
	// interface (deleted under us); Read asks it when a read fails.
	gone func() bool

	// vnet is the descriptor when it was opened with IFF_VNET_HDR, so
	// WriteGSO can hand the kernel segmentation-offloaded packets, and
	// reads see the virtio header (see splitVnet); nil otherwise.
	vnet io.ReadWriter

	readMu  sync.Mutex // serialises reads of vnet into readBuf
	readBuf []byte     // one virtio read: header and a packet of up to 64 KiB

	// rfile is the descriptor's file, which InterruptRead gives a read
	// deadline in the past; nil when the device has none.
	rfile *os.File
}

// VnetHdrLen is the size of the virtio_net_hdr (Linux ABI, native byte
// order) that precedes every packet given to WriteGSO.
const VnetHdrLen = 10

// GSOMaxSize is the largest IP packet WriteGSO takes: the IPv4 total length
// is 16 bits, and the margin leaves room for TCP options.
const GSOMaxSize = 65000

// GSOMaxSize reports the largest packet WriteGSO accepts, or 0 when the
// device cannot take segmentation-offloaded packets (opened without
// IFF_VNET_HDR, or not on Linux).
func (d *Device) GSOMaxSize() int {
	if d.vnet == nil {
		return 0
	}
	return GSOMaxSize
}

// WriteGSO writes one packet preceded by its virtio_net_hdr: b[:VnetHdrLen]
// is the header, b[VnetHdrLen:] the IP packet, which may be a TCP segment up
// to GSOMaxSize bytes with gso_type TCPV4/TCPV6 and a partial checksum. The
// kernel then treats it like a packet from a NIC with segmentation and
// checksum offload: delivered locally as one large segment, never checksummed
// in software. It bypasses Write's GRO; callers keep per-flow order by
// writing in sequence.
func (d *Device) WriteGSO(b []byte) error {
	if d.vnet == nil {
		return errors.New("tun: WriteGSO on a device without IFF_VNET_HDR")
	}
	if len(b) <= VnetHdrLen || len(b)-VnetHdrLen > GSOMaxSize {
		return fmt.Errorf("tun: WriteGSO of %d bytes (header %d, packet at most %d)", len(b), VnetHdrLen, GSOMaxSize)
	}
	_, err := d.vnet.Write(b)
	return err
}

// WriteGSOVec is WriteGSO of a packet in pieces: the concatenation of bufs
// is what WriteGSO takes (the virtio_net_hdr, then the IP packet), written
// with one writev, so the caller need not copy the pieces together.
func (d *Device) WriteGSOVec(bufs [][]byte) error {
	if d.vnet == nil {
		return errors.New("tun: WriteGSOVec on a device without IFF_VNET_HDR")
	}
	n := 0
	for _, b := range bufs {
		n += len(b)
	}
	if n <= VnetHdrLen || n-VnetHdrLen > GSOMaxSize {
		return fmt.Errorf("tun: WriteGSOVec of %d bytes (header %d, packet at most %d)", n, VnetHdrLen, GSOMaxSize)
	}
	if w, ok := d.vnet.(interface {
		Writev([][]byte) (int, error)
	}); ok {
		_, err := w.Writev(bufs)
		return err
	}
	joined := make([]byte, 0, n)
	for _, b := range bufs {
		joined = append(joined, b...)
	}
	_, err := d.vnet.Write(joined)
	return err
}

// Read reads up to len(bufs) packets into bufs[i][offset:]; see BatchDevice.
// A segmentation-offloaded packet with more segments than bufs yields the
// segments that fit and an error wrapping stack.ErrPacketsLost (and
// wireguard-go's tun.ErrTooManySegments); reading may go on.
func (d *Device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return d.ReadValidated(bufs, sizes, nil, offset)
}

// ReadValidated is Read that also reports, in valid[i] (when valid is not
// nil; len(valid) >= len(bufs)), whether packet i's checksums are known to be
// correct: the kernel validated them, or they were computed while splitting
// a segmentation-offloaded packet or completing a partial checksum. Without
// IFF_VNET_HDR nothing is known and every valid[i] is false
// (stack.ValidatingDevice).
func (d *Device) ReadValidated(bufs [][]byte, sizes []int, valid []bool, offset int) (int, error) {
	var n int
	var err error
	if d.vnet != nil {
		d.readMu.Lock()
		var m int
		if m, err = d.vnet.Read(d.readBuf); err == nil {
			n, err = splitVnet(d.readBuf[:m], bufs, sizes, valid, offset)
		}
		d.readMu.Unlock()
	} else {
		n, err = d.dev.Read(bufs, sizes, offset)
		if valid != nil {
			clear(valid[:n])
		}
		err = wrapReadErr(err)
	}
	if err != nil && d.rfile != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return 0, d.interrupted(err)
	}
	if err != nil && !errors.Is(err, os.ErrClosed) && !errors.Is(err, stack.ErrPacketsLost) && d.gone != nil && d.gone() {
		// The interface was deleted under us. Depending on where the
		// read was, the descriptor reports that as EBADFD (which
		// wireguard-go turns into os.ErrClosed) or as "not pollable";
		// callers get os.ErrClosed either way.
		return n, fmt.Errorf("tun: %s: interface gone (%v): %w", d.name, err, os.ErrClosed)
	}
	return n, err
}

// InterruptRead implements stack.ReadInterrupter: the Read blocked now,
// or else the next one, returns at once with no packets and an error
// wrapping os.ErrDeadlineExceeded, and clears the deadline that woke it
// (InterruptRead sets one in the past), so later Reads block again.
// No packet is lost: the runtime checks the deadline before it reads.
// It fails when the descriptor is not in the runtime's poller (a
// blocking one) or is closed.
func (d *Device) InterruptRead() error {
	if d.rfile == nil {
		return fmt.Errorf("tun: %s: no descriptor to interrupt: %w", d.name, os.ErrNoDeadline)
	}
	if err := d.rfile.SetReadDeadline(time.Unix(1, 0)); err != nil {
		return fmt.Errorf("tun: %s: interrupt read: %w", d.name, err)
	}
	return nil
}

// interrupted is what ReadValidated returns for a read that InterruptRead
// woke (err): the deadline cleared, and the pages of the virtio read
// buffer, which a burst of segmentation-offloaded packets filled, handed
// back to the system, as the caller does with its own buffers.
func (d *Device) interrupted(err error) error {
	if derr := d.rfile.SetReadDeadline(time.Time{}); derr != nil {
		// Closed meanwhile: the next read says so.
		err = errors.Join(err, derr)
	}
	if d.vnet != nil {
		d.readMu.Lock()
		memtrim.ReleasePages(d.readBuf)
		d.readMu.Unlock()
	}
	return fmt.Errorf("tun: %s: read interrupted: %w", d.name, err)
}

// WholeReadSize is the buffer ReadWhole needs: 64 KiB, the largest buffer
// the netstack pools. It holds the virtio header and any packet the kernel
// hands a TUN at an MTU up to 65526: its TSO segments stay under 64 KiB
// by the room it keeps for headers (MAX_TCP_HEADER). A packet that does
// not fit is reported lost (see ReadWhole).
const WholeReadSize = 64 << 10

// WholeReadSize reports the buffer ReadWhole needs, 0 when it never
// returns a segment whole (the device was opened without IFF_VNET_HDR).
func (d *Device) WholeReadSize() int {
	if d.vnet == nil {
		return 0
	}
	return WholeReadSize
}

// ReadWhole makes one read into big (at least WholeReadSize bytes, or
// the read fails). A TCP segment the kernel left for the device to split
// (TSO) comes back whole as big[start:end], with n == 0: one packet of up
// to 64 KiB for the stack instead of dozens, nothing copied, nothing
// checksummed (see wholeTCP). Any other read comes back as ReadValidated
// returns it, in bufs, with start == end == 0. A device opened without
// IFF_VNET_HDR only ever does the latter (stack.WholeSegmentDevice).
func (d *Device) ReadWhole(big []byte, bufs [][]byte, sizes []int, valid []bool, offset int) (n, start, end int, err error) {
	if d.vnet == nil {
		n, err = d.ReadValidated(bufs, sizes, valid, offset)
		return n, 0, 0, err
	}
	if len(big) < WholeReadSize {
		return 0, 0, 0, fmt.Errorf("tun: ReadWhole into %d bytes, need %d", len(big), WholeReadSize)
	}
	var m int
	if m, err = d.vnet.Read(big[:WholeReadSize]); err == nil {
		var ok bool
		if m == WholeReadSize && truncated(big[VnetHdrLen:m]) {
			err = fmt.Errorf("tun: %w: a packet longer than the %d-byte read buffer", stack.ErrPacketsLost, WholeReadSize-VnetHdrLen)
		} else if start, end, ok, err = wholeTCP(big[:m]); err == nil && !ok {
			n, err = splitVnet(big[:m], bufs, sizes, valid, offset)
		}
	}
	if err != nil && d.rfile != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return 0, 0, 0, d.interrupted(err)
	}
	if err != nil && !errors.Is(err, os.ErrClosed) && !errors.Is(err, stack.ErrPacketsLost) && d.gone != nil && d.gone() {
		return n, 0, 0, fmt.Errorf("tun: %s: interface gone (%v): %w", d.name, err, os.ErrClosed)
	}
	return n, start, end, err
}

// truncated says whether the IP packet's length field claims more bytes
// than pkt holds.
func truncated(pkt []byte) bool {
	switch {
	case len(pkt) >= 20 && pkt[0]>>4 == 4:
		return int(binary.BigEndian.Uint16(pkt[2:])) > len(pkt)
	case len(pkt) >= 40 && pkt[0]>>4 == 6:
		return 40+int(binary.BigEndian.Uint16(pkt[4:])) > len(pkt)
	}
	return false
}

// Write writes the packets bufs[i][offset:]; offset must be >= Headroom. The
// bytes before offset and the slices in bufs may be modified (GRO coalesces
// packets in place, so buffers with spare capacity coalesce better).
func (d *Device) Write(bufs [][]byte, offset int) (int, error) {
	return d.dev.Write(bufs, offset)
}

// BatchSize is the largest number of packets one Read returns and the
// preferred number of packets per Write. It does not change.
func (d *Device) BatchSize() int { return d.dev.BatchSize() }

// MTU reports the device's current MTU.
func (d *Device) MTU() (int, error) { return d.dev.MTU() }

// Name is the interface name.
func (d *Device) Name() string { return d.name }

// Index is the interface index.
func (d *Device) Index() int { return d.index }

// Created reports whether Open created the interface (and Close removes it).
func (d *Device) Created() bool { return d.created }

// Close closes the device. An interface Open created is removed; an adopted
// descriptor is closed but the interface is left alone. Close is idempotent.
func (d *Device) Close() error {
	d.closeOnce.Do(func() {
		err := d.dev.Close()
		if err != nil {
			err = fmt.Errorf("tun: close %s: %w", d.name, err)
		}
		if d.closeHook != nil {
			err = errors.Join(err, d.closeHook())
		}
		d.closeErr = err
	})
	return d.closeErr
}

var (
	_ BatchDevice              = (*Device)(nil)
	_ stack.ValidatingDevice   = (*Device)(nil)
	_ stack.WholeSegmentDevice = (*Device)(nil)
	_ stack.GSODevice          = (*Device)(nil)
	_ stack.GSOVectorDevice    = (*Device)(nil)
	_ stack.ReadInterrupter    = (*Device)(nil)
)

func discardIfNil(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
