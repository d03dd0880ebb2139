package relay

import (
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

// notifySource is the app side of a notified direction as the netstack's
// connections are: it hands its bytes over (a DirectReader) and calls
// back once it has more (a ReadNotifier, here: the test's arm channel).
type notifySource struct {
	segSource
	armed chan func() // NotifyRead's function, for the test to call
}

func (s *notifySource) NotifyRead(fn func()) { s.armed <- fn }

// A Poller's worker grows its stack once, when it starts, and not again
// for each direction it runs (each request of a round trip): the grow zeroes a 12 KiB frame, which
// before cost every request of a round trip about half a microsecond
// (and a third of the L1 data cache) before it went upstream. Seen
// failing with the grow made at every run: 40 grows over 40 requests.
func TestWorkerGrowsStackOnce(t *testing.T) {
	const requests = 40
	c, s := testenv.TCPPair(t)
	k := kernelConnOf(c)
	if k == nil {
		t.Fatal("kernelConnOf(*net.TCPConn) = nil")
	}
	w := newWorkers()
	defer w.stop()
	src := &notifySource{armed: make(chan func(), 1)}
	var up atomic.Int64
	p := &pair{a: nil, b: c, last: new(atomic.Int64)}
	h := &notifiedHalf{p: p, src: nil, dst: c, kdst: k, n: src, count: &up, done: func(r result) { t.Errorf("the direction ended: %v", r.err) }}
	h.wakeFn = func() {
		if !w.run(h) {
			t.Error("no worker took the direction")
		}
	}
	// src is only read through ReadTo: the direction needs it as a
	// DirectReader behind a net.Conn.
	h.src = directConn{src}
	one := make([]byte, 1)
	for i := range requests {
		src.segs = [][]byte{{byte(i)}}
		h.wakeFn()
		select {
		case <-src.armed: // drained and parked again
		case <-time.After(10 * time.Second):
			t.Fatalf("request %d: the direction never parked again", i)
		}
		if _, err := io.ReadFull(s, one); err != nil || one[0] != byte(i) {
			t.Fatalf("request %d: upstream read %v, %v", i, one, err)
		}
	}
	if got := up.Load(); got != requests {
		t.Errorf("%d bytes counted, want %d", got, requests)
	}
	// A wake that comes before the worker waits again starts another
	// one (up to w.max): each grows once.
	if g, n := w.grows.Load(), w.started.Load(); g != uint64(n) || n > w.max {
		t.Errorf("%d workers grew their stacks %d times over %d requests, want once each (at most %d workers)", n, g, requests, w.max)
	}
}

// directConn is a DirectReader behind a net.Conn; only ReadTo is used.
type directConn struct{ *notifySource }

func (directConn) Read([]byte) (int, error)         { panic("Read: the direction reads with ReadTo") }
func (directConn) Write(b []byte) (int, error)      { return len(b), nil }
func (directConn) Close() error                     { return nil }
func (directConn) LocalAddr() net.Addr              { return nil }
func (directConn) RemoteAddr() net.Addr             { return nil }
func (directConn) SetDeadline(time.Time) error      { return nil }
func (directConn) SetReadDeadline(time.Time) error  { return nil }
func (directConn) SetWriteDeadline(time.Time) error { return nil }
