package wg

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
)

// Pipe is an in-memory packet link with two ends: what one end writes, the
// other reads. The WireGuard inbound puts wireguard-go's device on one end
// (an End is a tun.Device) and the netstack on the other (an End is a
// stack.Device), so a peer's decrypted packets enter the stack as a TUN's
// would, with no kernel interface and so no privilege.
//
// Each direction is a bounded queue of pooled buffers. A write never
// blocks: like a link, the pipe drops a packet when the reader is that far
// behind, and counts it. Closing either end closes both.
type Pipe struct {
	a, b End
	ab   queue // a writes, b reads
	ba   queue // b writes, a reads

	pool sync.Pool // *[]byte of cap bufSize
	// bufSize is the capacity of pooled buffers: the MTU. A longer packet
	// (a peer configured with a bigger MTU) gets a buffer of its own.
	bufSize int

	done      chan struct{}
	closeOnce sync.Once
	events    chan tun.Event
}

// PipeConfig configures NewPipe; zero values take the defaults.
type PipeConfig struct {
	// MTU is what both ends report; default 1420 (WireGuard's usual).
	MTU int
	// Queue is how many packets each direction holds before it drops;
	// default 1024.
	Queue int
	// Batch is both ends' BatchSize; default conn.IdealBatchSize (128).
	Batch int
	// Name is the tun.Device name the WireGuard end reports; default "wg".
	Name string
}

// Pipe defaults.
const (
	DefaultMTU       = 1420
	DefaultPipeQueue = 1024
)

// PipeStats counts one direction of a pipe.
type PipeStats struct {
	Packets uint64 // packets handed to the reader
	Drops   uint64 // dropped on write: the queue was full
	// Oversize are packets the reader's buffer could not hold (dropped on
	// read, so one bad packet never fails a Read).
	Oversize uint64
}

type queue struct {
	ch                       chan *[]byte
	packets, drops, oversize atomic.Uint64
}

// End is one end of a Pipe. It satisfies wireguard-go's tun.Device and the
// stack's Device: Read blocks until a packet arrives and then takes as many
// as are queued, up to len(bufs); Write copies bufs[i][offset:] into the
// other end's queue. Both return os.ErrClosed once the pipe is closed.
type End struct {
	p   *Pipe
	in  *queue // read from
	out *queue // written to
	mtu int
	bat int
	nm  string
}

// NewPipe returns a connected pipe.
func NewPipe(cfg PipeConfig) *Pipe {
	if cfg.MTU <= 0 {
		cfg.MTU = DefaultMTU
	}
	if cfg.Queue <= 0 {
		cfg.Queue = DefaultPipeQueue
	}
	if cfg.Batch <= 0 {
		cfg.Batch = conn.IdealBatchSize
	}
	if cfg.Name == "" {
		cfg.Name = "wg"
	}
	p := &Pipe{bufSize: cfg.MTU, done: make(chan struct{}), events: make(chan tun.Event)}
	p.ab.ch = make(chan *[]byte, cfg.Queue)
	p.ba.ch = make(chan *[]byte, cfg.Queue)
	p.pool.New = func() any { b := make([]byte, 0, p.bufSize); return &b }
	p.a = End{p: p, in: &p.ba, out: &p.ab, mtu: cfg.MTU, bat: cfg.Batch, nm: cfg.Name}
	p.b = End{p: p, in: &p.ab, out: &p.ba, mtu: cfg.MTU, bat: cfg.Batch, nm: cfg.Name + "-stack"}
	return p
}

// WireGuardEnd is the end for wireguard-go's device.NewDevice.
func (p *Pipe) WireGuardEnd() *End { return &p.a }

// StackEnd is the end for stack.New.
func (p *Pipe) StackEnd() *End { return &p.b }

// Stats reports both directions: toStack is what the WireGuard end wrote
// (packets from peers), fromStack what the stack end wrote.
func (p *Pipe) Stats() (toStack, fromStack PipeStats) {
	return p.ab.stats(), p.ba.stats()
}

func (q *queue) stats() PipeStats {
	return PipeStats{Packets: q.packets.Load(), Drops: q.drops.Load(), Oversize: q.oversize.Load()}
}

// Close closes the pipe: both ends' Reads return os.ErrClosed and queued
// packets are discarded. Idempotent.
func (p *Pipe) Close() error {
	p.closeOnce.Do(func() {
		close(p.done)
		close(p.events)
	})
	return nil
}

func (p *Pipe) closed() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *Pipe) get(n int) *[]byte {
	if n > p.bufSize {
		b := make([]byte, n)
		return &b
	}
	b := p.pool.Get().(*[]byte)
	*b = (*b)[:n]
	return b
}

func (p *Pipe) put(b *[]byte) {
	if cap(*b) == p.bufSize {
		p.pool.Put(b)
	}
}

// Read fills bufs[i][offset:] with queued packets; see End.
func (e *End) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(sizes) < len(bufs) {
		return 0, fmt.Errorf("wg: pipe read: len(sizes) %d < len(bufs) %d", len(sizes), len(bufs))
	}
	if len(bufs) == 0 {
		return 0, nil
	}
	var b *[]byte
	select {
	case b = <-e.in.ch:
	case <-e.p.done:
		return 0, os.ErrClosed
	}
	n := 0
	for {
		if offset+len(*b) <= len(bufs[n]) {
			sizes[n] = copy(bufs[n][offset:], *b)
			n++
			e.in.packets.Add(1)
		} else {
			e.in.oversize.Add(1)
		}
		e.p.put(b)
		if n == len(bufs) {
			return n, nil
		}
		select {
		case b = <-e.in.ch:
		default:
			if n == 0 {
				// Only oversize packets so far: wait for another
				// rather than return an empty read.
				select {
				case b = <-e.in.ch:
				case <-e.p.done:
					return 0, os.ErrClosed
				}
				continue
			}
			return n, nil
		}
	}
}

// Write queues copies of bufs[i][offset:] for the other end, dropping those
// that find the queue full. It reports every packet as written, as a link
// does.
func (e *End) Write(bufs [][]byte, offset int) (int, error) {
	if e.p.closed() {
		return 0, os.ErrClosed
	}
	for i, buf := range bufs {
		if offset > len(buf) {
			return i, fmt.Errorf("wg: pipe write: offset %d beyond a buffer of %d", offset, len(buf))
		}
		pkt := buf[offset:]
		if len(pkt) == 0 {
			continue
		}
		b := e.p.get(len(pkt))
		copy(*b, pkt)
		select {
		case e.out.ch <- b:
		default:
			e.out.drops.Add(1)
			e.p.put(b)
		}
	}
	return len(bufs), nil
}

// BatchSize is the most packets one Read returns or one Write should carry.
func (e *End) BatchSize() int { return e.bat }

// MTU is the pipe's MTU.
func (e *End) MTU() (int, error) { return e.mtu, nil }

// Close closes the whole pipe.
func (e *End) Close() error { return e.p.Close() }

// File is nil: there is no descriptor behind a pipe.
func (e *End) File() *os.File { return nil }

// Name is the name given in PipeConfig.
func (e *End) Name() (string, error) { return e.nm, nil }

// Events delivers nothing and is closed when the pipe closes. The pipe
// never announces itself up: wireguard-go would then open its socket before
// it is configured; the inbound calls Device.Up itself.
func (e *End) Events() <-chan tun.Event { return e.p.events }

var _ tun.Device = (*End)(nil)
