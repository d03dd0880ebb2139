package relay

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// MaxDatagram is the size of a packet buffer: the largest UDP payload.
const MaxDatagram = 65535

// packetBufs are the packet buffers of every packet relay and of the
// router's own datagram reads.
var packetBufs = sync.Pool{New: func() any { b := make([]byte, MaxDatagram); return &b }}

// PacketBuf takes a MaxDatagram-byte buffer from the pool the packet relays
// use; give it back with PutPacketBuf once no datagram is in it.
func PacketBuf() *[]byte { return packetBufs.Get().(*[]byte) }

// PutPacketBuf returns a buffer taken with PacketBuf.
func PutPacketBuf(b *[]byte) { packetBufs.Put(b) }

// Pump moves one datagram from one side of a packet relay to the other: it
// blocks for the next datagram, forwards it (translating addresses and
// headers as its owner needs) and returns the payload bytes forwarded. A
// datagram it chooses to drop returns 0 and a nil error. Once its side is
// closed it must return an error.
type Pump func(buf []byte) (int, error)

// PacketOptions tunes Packets.
type PacketOptions struct {
	// Idle ends the relay when no datagram has moved either way for this
	// long. Zero disables it.
	Idle time.Duration
	// Up and Down, when not nil, count the bytes each pump forwards.
	Up, Down Counter
	// BufSize is each pump's buffer; 0 means MaxDatagram, taken from the
	// shared pool (see PacketBuf) for as long as the pump runs.
	BufSize int
	// UpWait and DownWait, when not nil, block until their pump has a
	// datagram to read (or its side ended: then the pump's next call
	// fails). A pump with one takes its MaxDatagram buffer from the pool
	// only once its wait returns and gives it back after the datagram,
	// so an idle relay holds no buffer. Ignored with BufSize.
	UpWait, DownWait func() error
	// Activity, when not nil, is the relay's last-activity clock
	// (time.UnixNano). Callers that move datagrams outside the two pumps
	// store time.Now().UnixNano() in it, so the idle timer counts them.
	Activity *atomic.Int64
	// Poller lets PacketsAsync park the down direction while its socket
	// has nothing to read; Packets ignores it.
	Poller *Poller
	// ParkAfter is how long a PacketsAsync direction waits on its
	// goroutine after the relay's last datagram either way before it
	// parks (when its side can wait with a deadline, see
	// ParkedPackets.UpWait); while datagrams flow it never parks.
	// Default 500 ms.
	ParkAfter time.Duration
}

// Packets runs up and down until either fails, the relay is idle for
// opts.Idle, or ctx is done; then it calls closeAll, which must unblock both
// pumps, and waits for them. It returns the bytes each pump forwarded and
// ErrIdle when the idle timer ended it, nil when ctx did, or the first pump
// error otherwise.
func Packets(ctx context.Context, opts PacketOptions, up, down Pump, closeAll func()) (upBytes, downBytes int64, err error) {
	var (
		once   sync.Once
		own    atomic.Int64
		reason error
		mu     sync.Mutex
	)
	last := &own
	if opts.Activity != nil {
		last = opts.Activity
	}
	stopWith := func(why error) {
		once.Do(func() {
			mu.Lock()
			reason = why
			mu.Unlock()
			closeAll()
		})
	}
	stopCtx := context.AfterFunc(ctx, func() { stopWith(nil) })
	defer stopCtx()
	last.Store(time.Now().UnixNano())

	if opts.Idle > 0 {
		// tmu orders the assignment of t before the callback's use of it.
		var (
			tmu sync.Mutex
			t   *time.Timer
		)
		tmu.Lock()
		t = time.AfterFunc(opts.Idle, func() {
			since := time.Since(time.Unix(0, last.Load()))
			if since >= opts.Idle {
				stopWith(ErrIdle)
				return
			}
			tmu.Lock()
			t.Reset(opts.Idle - since)
			tmu.Unlock()
		})
		tmu.Unlock()
		defer func() {
			tmu.Lock()
			t.Stop()
			tmu.Unlock()
		}()
	}
	run := func(p Pump, wait func() error, total *int64, count Counter) {
		var buf []byte
		var bp *[]byte
		switch {
		case opts.BufSize > 0 && opts.BufSize != MaxDatagram:
			buf, wait = make([]byte, opts.BufSize), nil
		case wait == nil:
			bp = PacketBuf()
			defer PutPacketBuf(bp)
			buf = *bp
		}
		for {
			if wait != nil {
				if err := wait(); err != nil {
					stopWith(err)
					return
				}
				bp = PacketBuf()
				buf = *bp
			}
			n, err := p(buf)
			if wait != nil {
				PutPacketBuf(bp)
				bp, buf = nil, nil
			}
			if err != nil {
				stopWith(err)
				return
			}
			if n > 0 {
				last.Store(time.Now().UnixNano())
				*total += int64(n)
				if count != nil {
					count.Add(int64(n))
				}
			}
		}
	}
	// The up pump runs on the caller's goroutine: one goroutine fewer per
	// relay.
	downDone := make(chan struct{})
	go func() {
		defer close(downDone)
		run(down, opts.DownWait, &downBytes, opts.Down)
	}()
	run(up, opts.UpWait, &upBytes, opts.Up)
	<-downDone
	mu.Lock()
	defer mu.Unlock()
	return upBytes, downBytes, reason
}
