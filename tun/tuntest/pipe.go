// Package tuntest provides an in-memory TUN device for tests: a Device that
// the code under test reads and writes like tun.Device, and a Peer that plays
// the kernel side (injects packets the device will read, and receives the
// packets the device writes).
package tuntest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
)

const (
	// BatchSize is the Device's BatchSize.
	BatchSize = 32
	// QueueLen is how many packets each direction buffers before Inject or
	// Write blocks.
	QueueLen = 1024
	// MinWriteOffset mirrors the Linux TUN's virtio header requirement:
	// Write rejects smaller offsets so code that forgets the headroom fails
	// in tests, not only on a real device.
	MinWriteOffset = 10
)

// Device is the side the code under test uses. It satisfies tun.BatchDevice.
type Device struct {
	mtu  int
	in   chan []byte // peer -> device
	out  chan []byte // device -> peer
	done chan struct{}
	once sync.Once
	intr chan struct{} // capacity 1: InterruptRead was called

	interrupts atomic.Uint64 // Reads InterruptRead ended

	readPkts, writePkts atomic.Uint64
	readDrops           atomic.Uint64

	gsoMax                int // SetGSO; 0: WriteGSO refused
	gsoPkts, gsoSegmented atomic.Uint64
	gsoVec                atomic.Uint64 // of gsoPkts, through WriteGSOVec

	validated atomic.Bool // SetValidated
}

// Peer is the kernel side of the pipe.
type Peer struct{ d *Device }

// NewPipe returns a connected Device and Peer. The device rejects writes of
// packets longer than mtu, like a link would.
func NewPipe(mtu int) (*Device, *Peer) {
	if mtu <= 0 || mtu > 65535 {
		mtu = 1500
	}
	d := &Device{
		mtu:  mtu,
		in:   make(chan []byte, QueueLen),
		out:  make(chan []byte, QueueLen),
		done: make(chan struct{}),
		intr: make(chan struct{}, 1),
	}
	return d, &Peer{d: d}
}

// Read blocks until at least one packet is available, then returns as many
// as are queued, up to len(bufs). A packet that does not fit bufs[i][offset:]
// is dropped with an error. After Close it returns os.ErrClosed.
func (d *Device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	if len(sizes) < len(bufs) {
		return 0, fmt.Errorf("tuntest: len(sizes) %d < len(bufs) %d", len(sizes), len(bufs))
	}
	if offset < 0 {
		return 0, fmt.Errorf("tuntest: negative offset %d", offset)
	}
	var first []byte
	select {
	case <-d.intr:
		d.interrupts.Add(1)
		return 0, fmt.Errorf("tuntest: read interrupted: %w", os.ErrDeadlineExceeded)
	default:
	}
	select {
	case first = <-d.in:
	case <-d.intr:
		d.interrupts.Add(1)
		return 0, fmt.Errorf("tuntest: read interrupted: %w", os.ErrDeadlineExceeded)
	case <-d.done:
		return 0, os.ErrClosed
	}
	n := 0
	pkt := first
	for {
		if len(pkt) > len(bufs[n])-offset {
			d.readDrops.Add(1)
			return n, fmt.Errorf("tuntest: packet of %d bytes overflows buffer of %d at offset %d", len(pkt), len(bufs[n]), offset)
		}
		sizes[n] = copy(bufs[n][offset:], pkt)
		n++
		d.readPkts.Add(1)
		if n == len(bufs) {
			return n, nil
		}
		select {
		case pkt = <-d.in:
		default:
			return n, nil
		}
	}
}

// InterruptRead makes the Read blocked now, or else the next one, return
// no packets and an error wrapping os.ErrDeadlineExceeded, as the Linux
// TUN does (stack.ReadInterrupter); no packet is lost.
func (d *Device) InterruptRead() error {
	select {
	case d.intr <- struct{}{}:
	default:
	}
	return nil
}

// Interrupts reports how many Reads InterruptRead ended.
func (d *Device) Interrupts() uint64 { return d.interrupts.Load() }

// SetValidated makes ReadValidated report every packet's checksums as
// known good, as the Linux TUN does for what it split from a GSO packet or
// completed a partial checksum of; the default reports none, as a TUN
// without offload.
func (d *Device) SetValidated(v bool) { d.validated.Store(v) }

// ReadValidated is Read that also sets valid[i] for every packet returned
// (stack.ValidatingDevice), to what SetValidated said.
func (d *Device) ReadValidated(bufs [][]byte, sizes []int, valid []bool, offset int) (int, error) {
	n, err := d.Read(bufs, sizes, offset)
	v := d.validated.Load()
	for i := range n {
		valid[i] = v
	}
	return n, err
}

// Write hands copies of bufs[i][offset:] to the peer, blocking while the
// peer's queue is full. It returns os.ErrClosed after Close.
func (d *Device) Write(bufs [][]byte, offset int) (int, error) {
	if offset < MinWriteOffset {
		return 0, fmt.Errorf("tuntest: write offset %d < %d", offset, MinWriteOffset)
	}
	for i, b := range bufs {
		if offset > len(b) {
			return i, fmt.Errorf("tuntest: offset %d beyond buffer of %d", offset, len(b))
		}
		pkt := b[offset:]
		if len(pkt) > d.mtu {
			return i, fmt.Errorf("tuntest: packet of %d bytes exceeds MTU %d", len(pkt), d.mtu)
		}
		if len(pkt) == 0 {
			return i, errors.New("tuntest: empty packet")
		}
		select {
		case <-d.done:
			return i, os.ErrClosed
		default:
		}
		select {
		case d.out <- append([]byte(nil), pkt...):
			d.writePkts.Add(1)
		case <-d.done:
			return i, os.ErrClosed
		}
	}
	return len(bufs), nil
}

// BatchSize implements tun.BatchDevice.
func (d *Device) BatchSize() int { return BatchSize }

// MTU implements tun.BatchDevice.
func (d *Device) MTU() (int, error) { return d.mtu, nil }

// Name returns "tuntest".
func (d *Device) Name() string { return "tuntest" }

// Close closes both ends; it is idempotent.
func (d *Device) Close() error {
	d.once.Do(func() { close(d.done) })
	return nil
}

// Counters reports packets read by and written by the device and packets
// dropped because they did not fit the reader's buffer.
func (d *Device) Counters() (read, written, readDrops uint64) {
	return d.readPkts.Load(), d.writePkts.Load(), d.readDrops.Load()
}

// Inject queues a copy of pkt for the device to read, blocking while the
// queue is full. It returns os.ErrClosed once the pipe is closed.
func (p *Peer) Inject(pkt []byte) error {
	return p.InjectContext(context.Background(), pkt)
}

// InjectContext is Inject that also gives up when ctx ends.
func (p *Peer) InjectContext(ctx context.Context, pkt []byte) error {
	if len(pkt) == 0 {
		return errors.New("tuntest: empty packet")
	}
	c := append([]byte(nil), pkt...)
	select {
	case <-p.d.done:
		return os.ErrClosed
	default:
	}
	select {
	case p.d.in <- c:
		return nil
	case <-p.d.done:
		return os.ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Packets delivers the packets the device wrote, in order. The channel is
// never closed; select on Done as well.
func (p *Peer) Packets() <-chan []byte { return p.d.out }

// Done is closed when the pipe is closed.
func (p *Peer) Done() <-chan struct{} { return p.d.done }

// Next returns the next packet the device wrote, or an error when ctx ends or
// the pipe closes first.
func (p *Peer) Next(ctx context.Context) ([]byte, error) {
	select {
	case pkt := <-p.d.out:
		return pkt, nil
	case <-p.d.done:
		return nil, os.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// MTU is the pipe's MTU.
func (p *Peer) MTU() int { return p.d.mtu }

// Close closes the pipe, like Device.Close.
func (p *Peer) Close() error { return p.d.Close() }
