package relay

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

// notifyQueue is an up side that says when it has a datagram, as the
// netstack's UDP flows do (NotifyRead).
type notifyQueue struct {
	mu     sync.Mutex
	items  [][]byte
	closed bool
	notify func()
}

func (q *notifyQueue) push(p []byte) {
	q.mu.Lock()
	q.items = append(q.items, p)
	fn := q.notify
	q.notify = nil
	q.mu.Unlock()
	if fn != nil {
		fn()
	}
}

func (q *notifyQueue) close() {
	q.mu.Lock()
	q.closed = true
	fn := q.notify
	q.notify = nil
	q.mu.Unlock()
	if fn != nil {
		fn()
	}
}

func (q *notifyQueue) NotifyRead(fn func()) {
	q.mu.Lock()
	if q.closed || len(q.items) > 0 {
		q.mu.Unlock()
		fn()
		return
	}
	q.notify = fn
	q.mu.Unlock()
}

// pop takes the next datagram into b: ok false when none waits.
func (q *notifyQueue) pop(b []byte) (int, bool, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return 0, false, net.ErrClosed
	}
	if len(q.items) == 0 {
		return 0, false, nil
	}
	p := q.items[0]
	q.items = q.items[1:]
	return copy(b, p), true, nil
}

// parkedGoroutines counts PacketsAsync's direction goroutines.
func parkedGoroutines() int {
	return testenv.Goroutines(func(g string) bool {
		return strings.Contains(g, "relay.(*parkedUp).run") || strings.Contains(g, "relay.(*parkedDown).run")
	})
}

// asyncPair is a PacketsAsync relay between a notifyQueue (the app) and
// a connected loopback UDP socket (the upstream), whose peer is remote;
// what the down pump reads goes to toApp.
type asyncPair struct {
	q      *notifyQueue
	up     *net.UDPConn
	remote *net.UDPConn
	toApp  chan []byte
	ended  chan [3]any
	// closedOutside closes the upstream socket as someone other than
	// the relay would, and says so (with DownClosed).
	closedOutside func()
}

func startAsync(t *testing.T, ctx context.Context, p *Poller, opts PacketOptions, notifyClose bool) *asyncPair {
	t.Helper()
	remote, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { remote.Close() })
	up, err := net.DialUDP("udp4", nil, remote.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	rc, err := up.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	a := &asyncPair{q: &notifyQueue{}, up: up, remote: remote, toApp: make(chan []byte, 64), ended: make(chan [3]any, 1)}
	var closedFn atomic.Pointer[func()]
	// The down side waits (WaitReadable, under its read deadline) for
	// ParkAfter after the last datagram, then parks.
	sides := ParkedPackets{UpNotify: a.q.NotifyRead, DownConn: rc, DownDeadline: up.SetReadDeadline}
	if opts.ParkAfter == 0 {
		opts.ParkAfter = 100 * time.Millisecond
	}
	if notifyClose {
		sides.DownClosed = func(fn func()) { closedFn.Store(&fn) }
	}
	upPump := func(b []byte) (int, bool, error) {
		n, ok, err := a.q.pop(b)
		if err != nil || !ok {
			return 0, ok, err
		}
		_, err = up.Write(b[:n])
		return n, true, err
	}
	downPump := func(b []byte) (int, bool, error) {
		n, _, ok, err := RecvNow(rc, b)
		if err != nil || !ok {
			return 0, ok, err
		}
		a.toApp <- bytes.Clone(b[:n])
		return n, true, nil
	}
	opts.Poller = p
	closeAll := func() {
		a.q.close()
		up.Close()
	}
	started := PacketsAsync(ctx, opts, sides, upPump, downPump, closeAll, func(u, d int64, err error) {
		a.ended <- [3]any{u, d, err}
	})
	if !started {
		t.Fatal("PacketsAsync did not start with a Poller")
	}
	if notifyClose {
		// The socket closed by someone else: the close notification.
		a.closedOutside = func() {
			up.Close()
			(*closedFn.Load())()
		}
	}
	return a
}

// TestPacketsAsync: datagrams move byte-exact both ways, sizes from 1
// byte to 60,000; an idle relay has no goroutine; the idle timer ends
// it with ErrIdle and the bytes each way, both sides closed.
func TestPacketsAsync(t *testing.T) {
	p, err := NewPoller()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var upC, downC atomic.Int64
	a := startAsync(t, context.Background(), p, PacketOptions{Idle: 3 * time.Second, Up: &upC, Down: &downC}, false)
	buf := make([]byte, 65536)
	var total int64
	for round := range 3 {
		for _, size := range []int{1, 100, 1472, 9000, 60000} {
			d := make([]byte, size)
			for i := range d {
				d[i] = byte(i*7 + size + round)
			}
			total += int64(size)
			a.q.push(d)
			a.remote.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, from, err := a.remote.ReadFromUDP(buf)
			if err != nil || !bytes.Equal(buf[:n], d) {
				t.Fatalf("upstream got %d bytes (%v), want the %d sent", n, err, size)
			}
			if _, err := a.remote.WriteToUDP(d, from); err != nil {
				t.Fatal(err)
			}
			select {
			case got := <-a.toApp:
				if !bytes.Equal(got, d) {
					t.Fatalf("app got %d bytes, different from the %d sent", len(got), size)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("no reply of %d bytes reached the app", size)
			}
		}
		// Idle: both directions park.
		got := 0
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if got = parkedGoroutines(); got == 0 {
				break
			}
		}
		if got != 0 {
			t.Fatalf("round %d: an idle relay holds %d goroutines, want none", round, got)
		}
	}
	select {
	case r := <-a.ended:
		if r[0].(int64) != total || r[1].(int64) != total || !errors.Is(r[2].(error), ErrIdle) {
			t.Fatalf("relay ended with %v, want %d bytes each way and ErrIdle", r, total)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the idle relay never ended")
	}
	if upC.Load() != total || downC.Load() != total {
		t.Fatalf("counters %d up, %d down, want %d", upC.Load(), downC.Load(), total)
	}
	if _, err := a.up.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("upstream socket after the end: %v, want closed", err)
	}
}

// TestPacketsAsyncEnds: a relay parked both ways ends when its context
// is done (no error), when its up side closes (its error), and when its
// upstream socket is closed by someone else who says so (DownClosed).
func TestPacketsAsyncEnds(t *testing.T) {
	p, err := NewPoller()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	waitEnd := func(a *asyncPair) [3]any {
		t.Helper()
		select {
		case r := <-a.ended:
			return r
		case <-time.After(10 * time.Second):
			t.Fatal("the relay never ended")
		}
		return [3]any{}
	}
	parked := func() {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); parkedGoroutines() != 0; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the relay never parked")
			}
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	a := startAsync(t, ctx, p, PacketOptions{}, false)
	parked()
	cancel()
	if r := waitEnd(a); r[2] != nil {
		t.Errorf("cancelled relay ended with %v, want no error", r[2])
	}

	a = startAsync(t, context.Background(), p, PacketOptions{}, false)
	parked()
	a.q.close()
	if r := waitEnd(a); !errors.Is(r[2].(error), net.ErrClosed) {
		t.Errorf("relay whose up side closed ended with %v, want net.ErrClosed", r[2])
	}

	a = startAsync(t, context.Background(), p, PacketOptions{}, true)
	parked()
	a.closedOutside()
	if r := waitEnd(a); !errors.Is(r[2].(error), net.ErrClosed) {
		t.Errorf("relay whose upstream was closed ended with %v, want net.ErrClosed", r[2])
	}
}

// RecvNow reads a waiting datagram even past the socket's read deadline
// (a parked relay direction's wait sets one, and its reads must not fail
// because it passed), says when none waits, and fails once the socket is
// closed.
func TestRecvNow(t *testing.T) {
	a, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := net.DialUDP("udp4", nil, a.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	rc, _ := a.SyscallConn()
	buf := make([]byte, 100)
	if n, _, ok, err := RecvNow(rc, buf); ok || err != nil || n != 0 {
		t.Fatalf("RecvNow with nothing waiting = %d, %v, %v", n, ok, err)
	}
	b.Write([]byte("late"))
	a.SetReadDeadline(time.Now().Add(-time.Second))
	if err := WaitReadable(rc); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("WaitReadable past the deadline: %v", err)
	}
	n, from, ok, err := RecvNow(rc, buf)
	if !ok || err != nil || string(buf[:n]) != "late" || from != b.LocalAddr().(*net.UDPAddr).AddrPort() {
		t.Fatalf("RecvNow past the deadline = %q from %v, %v, %v; want \"late\" from %v", buf[:n], from, ok, err, b.LocalAddr())
	}
	a.Close()
	if _, _, _, err := RecvNow(rc, buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("RecvNow after Close: %v, want net.ErrClosed", err)
	}
}
