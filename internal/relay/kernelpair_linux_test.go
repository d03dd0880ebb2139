package relay

import (
	"bytes"
	"context"
	"io"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tunsocks/tunsocks/internal/relay/relaytest"
	"github.com/tunsocks/tunsocks/internal/testenv"
)

// kernelStreamRun is a parking Stream between two kernel sockets.
type kernelStreamRun struct {
	app, remote *net.TCPConn // the peers of a and of b
	a           *relaytest.KernelConn
	b           *net.TCPConn
	p           *pair
	upC, downC  atomic.Int64
	ended       chan [3]any   // up, down, err
	fin         chan struct{} // closed when the Stream ended
	cancel      context.CancelFunc
}

// startKernelStream starts a Stream between a (behind relaytest.KernelConn) and b,
// both kernel sockets, with a Poller, as the router does for the system
// TCP stack: through StreamAsync.
func startKernelStream(t *testing.T, opts StreamOptions) *kernelStreamRun {
	t.Helper()
	pl, err := NewPoller()
	if err != nil {
		t.Fatal(err)
	}
	r := &kernelStreamRun{ended: make(chan [3]any, 1), fin: make(chan struct{})}
	var a *net.TCPConn
	r.app, a = testenv.TCPPair(t)
	r.a = relaytest.NewKernelConn(a)
	r.b, r.remote = testenv.TCPPair(t)
	opts.Poller = pl
	opts.Up, opts.Down = &r.upC, &r.downC
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	// As StreamAsync does, with the pair kept for the test to look at.
	s := startParking(ctx, r.a, r.b, &opts, func(up, down int64, err error) {
		r.ended <- [3]any{up, down, err}
		close(r.fin)
	})
	if s == nil {
		t.Fatal("startParking did not take a pair of kernel sockets")
	}
	r.p = &s.pair
	if r.p.parkedUp == nil {
		t.Fatal("the a->b direction of a kernel pair cannot park")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.fin:
		case <-time.After(10 * time.Second):
			t.Error("the Stream did not end at cleanup")
		}
		if err := pl.Close(); err != nil {
			t.Error(err)
		}
	})
	return r
}

// noLeaks checks, after the test and its cleanups, that no goroutine it
// started is left (the Poller's included).
func noLeaks(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// relayGoroutines counts goroutines running a relay direction.
func relayGoroutines() int {
	return testenv.Goroutines(func(g string) bool {
		return strings.Contains(g, "relay.(*polledHalf).run") || strings.Contains(g, "relay.(*notifiedHalf).run") ||
			strings.Contains(g, "relay.copyHalf")
	})
}

// waitBothParked waits until both directions are parked and no goroutine
// runs a direction.
func (r *kernelStreamRun) waitBothParked(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if r.p.parked.isParked() && r.p.parkedUp.isParked() && relayGoroutines() == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the idle kernel pair never parked both ways: b->a %v, a->b %v, %d relay goroutines",
				r.p.parked.isParked(), r.p.parkedUp.isParked(), relayGoroutines())
		}
	}
}

func (r *kernelStreamRun) wait(t *testing.T, what string) (up, down int64, err error) {
	t.Helper()
	select {
	case e := <-r.ended:
		err, _ = e[2].(error)
		return e[0].(int64), e[1].(int64), err
	case <-time.After(10 * time.Second):
		buf := make([]byte, 1<<20)
		t.Logf("%s", buf[:runtime.Stack(buf, true)])
		t.Fatalf("%s: the parked Stream never ended", what)
	}
	return 0, 0, nil
}

// TestKernelPairParksBothWays: a Stream between two kernel sockets (the
// system TCP stack's flows) parks both directions on the Poller once idle
// and holds no goroutine; bytes wake either direction, in order, spliced
// in bulk, and both FINs end it cleanly with every byte counted. Before,
// startParking refused a kernel a: the pair held two goroutines.
func TestKernelPairParksBothWays(t *testing.T) {
	noLeaks(t)
	r := startKernelStream(t, StreamOptions{ParkAfter: 20 * time.Millisecond})
	var up, down int64
	big := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	for i, msg := range []string{"one", "two", "three"} {
		r.waitBothParked(t)
		// Alternate which direction wakes first.
		if i%2 == 0 {
			echoOnce(t, r.app, r.remote, msg)
			echoOnce(t, r.remote, r.app, msg+"-down")
		} else {
			echoOnce(t, r.remote, r.app, msg+"-down")
			echoOnce(t, r.app, r.remote, msg)
		}
		up += int64(len(msg))
		down += int64(len(msg) + len("-down"))
	}
	// Bulk both ways after parking: more than a pipe or a buffer.
	for _, d := range [][2]*net.TCPConn{{r.app, r.remote}, {r.remote, r.app}} {
		r.waitBothParked(t)
		go d[0].Write(big)
		d[1].SetReadDeadline(time.Now().Add(10 * time.Second))
		got := make([]byte, len(big))
		if _, err := io.ReadFull(d[1], got); err != nil || !bytes.Equal(got, big) {
			t.Fatalf("1 MiB after parking: %v (equal %v)", err, bytes.Equal(got, big))
		}
	}
	up += int64(len(big))
	down += int64(len(big))
	r.waitBothParked(t)
	r.remote.CloseWrite()
	r.app.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := r.app.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("app read after upstream FIN = %d, %v; want EOF", n, err)
	}
	r.app.CloseWrite()
	r.remote.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := r.remote.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("upstream read after app FIN = %d, %v; want EOF", n, err)
	}
	gotUp, gotDown, err := r.wait(t, "both FINs")
	if err != nil || gotUp != up || gotDown != down {
		t.Fatalf("Stream = %d up, %d down, %v; want %d, %d, nil", gotUp, gotDown, err, up, down)
	}
	if r.upC.Load() != up || r.downC.Load() != down {
		t.Fatalf("counters %d up, %d down; want %d, %d", r.upC.Load(), r.downC.Load(), up, down)
	}
}

// TestKernelPairParkedEnds: a kernel pair with both directions parked
// ends when either peer closes, and when the caller closes both
// connections itself (the router's stop, a closing stack), in either
// order. No idle timer is set: nothing else would end it.
func TestKernelPairParkedEnds(t *testing.T) {
	noLeaks(t)
	for _, how := range []string{"app peer closes", "remote peer closes", "caller closes a then b", "caller closes b then a", "cancel"} {
		t.Run(how, func(t *testing.T) {
			r := startKernelStream(t, StreamOptions{ParkAfter: 20 * time.Millisecond})
			echoOnce(t, r.app, r.remote, "x")
			echoOnce(t, r.remote, r.app, "y")
			r.waitBothParked(t)
			switch how {
			case "app peer closes":
				r.app.Close()
				r.remote.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := r.remote.Read(make([]byte, 1)); err != io.EOF {
					t.Fatalf("remote read after the app closed = %v, want EOF", err)
				}
				r.remote.Close()
			case "remote peer closes":
				r.remote.Close()
				r.app.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := r.app.Read(make([]byte, 1)); err != io.EOF {
					t.Fatalf("app read after the remote closed = %v, want EOF", err)
				}
				r.app.Close()
			case "caller closes a then b":
				r.a.Close()
				r.b.Close()
			case "caller closes b then a":
				r.b.Close()
				time.Sleep(50 * time.Millisecond)
				r.a.Close()
			case "cancel":
				r.cancel()
			}
			up, down, _ := r.wait(t, how)
			if up != 1 || down != 1 {
				t.Fatalf("%s: Stream counted %d up, %d down; want 1, 1", how, up, down)
			}
		})
	}
}

// TestKernelPairWithoutCloseNotifier: a plain kernel socket a cannot say
// when it is closed, so its direction reads on a goroutine (the b->a one
// still parks), and closing a then b ends the Stream.
func TestKernelPairWithoutCloseNotifier(t *testing.T) {
	noLeaks(t)
	pl, err := NewPoller()
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	app, a := testenv.TCPPair(t)
	b, remote := testenv.TCPPair(t)
	done := make(chan struct{})
	s := startParking(context.Background(), a, b, &StreamOptions{Poller: pl, ParkAfter: 10 * time.Millisecond}, func(_, _ int64, _ error) { close(done) })
	if s == nil {
		t.Fatal("startParking did not take a kernel a to a kernel b")
	}
	if s.parkedUp != nil {
		t.Fatal("the a->b direction of a plain kernel socket parks: closing it would wake nothing")
	}
	echoOnce(t, app, remote, "x")
	echoOnce(t, remote, app, "y")
	waitParked(t, s.parked)
	a.Close()
	b.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("closing both connections did not end the Stream")
	}
}
