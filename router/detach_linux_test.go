package router

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/relay"
	"github.com/tunsocks/tunsocks/internal/relay/relaytest"
	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/stack"
)

// notifyConn is an app connection that is a relay.ReadNotifier, as the
// netstack's are, over a loopback TCP socket the relay does not see as
// one (the struct is not a *net.TCPConn).
type notifyConn struct{ *net.TCPConn }

func (c notifyConn) NotifyRead(fn func()) {
	rc, err := c.SyscallConn()
	if err != nil {
		fn()
		return
	}
	go func() {
		// Returning false makes the runtime wait until the socket is
		// readable (or closed) and ask again.
		_ = rc.Read(func(fd uintptr) bool {
			_, _, err := syscall.Recvfrom(int(fd), make([]byte, 1), syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			return err != syscall.EAGAIN
		})
		fn()
	}()
}

// appKinds are the app connections of the two TCP stacks.
var appKinds = map[string]func(*net.TCPConn) stack.Conn{
	"gVisor": func(c *net.TCPConn) stack.Conn { return notifyConn{c} },
	"system": func(c *net.TCPConn) stack.Conn { return relaytest.NewKernelConn(c) },
}

// flowGoroutines counts goroutines in a handler or a relay direction.
func flowGoroutines() int {
	return testenv.Goroutines(func(g string) bool {
		return strings.Contains(g, "router.(*Router).handleTCP") || strings.Contains(g, "relay.(*polledHalf).run") ||
			strings.Contains(g, "relay.(*notifiedHalf).run") || strings.Contains(g, "relay.copyHalf")
	})
}

// detachReq is a fakeReq whose Handler may return before the flow ends.
type detachReq struct {
	*fakeReq
	detached atomic.Bool
	stop     func()
	done     chan struct{}
	calls    atomic.Int32
}

func (r *detachReq) Detach(stop func()) func() {
	r.detached.Store(true)
	r.stop = stop
	return func() {
		if r.calls.Add(1) == 1 {
			close(r.done)
		}
	}
}

// TestTCPDetachedFlowEnds: with a Poller and a request that can detach,
// handleTCP returns while the flow is still relayed, the flow keeps
// relaying, and when either side closes it ends as a relayed flow does:
// its record sent with its bytes, its table entry gone, TCPOpen back to 0,
// the request's done called once. So for the app connections of both
// TCP stacks; with the system stack's (kernel sockets both sides), the
// flow, once idle, also holds no goroutine (before: two).
func TestTCPDetachedFlowEnds(t *testing.T) {
	pl, err := relay.NewPoller()
	if err != nil {
		t.Skipf("no relay poller here: %v", err)
	}
	defer pl.Close()
	for _, tc := range []struct {
		kind     string
		appFirst bool
	}{{"gVisor", true}, {"gVisor", false}, {"system", true}, {"system", false}} {
		appFirst := tc.appFirst
		appLocal, appRemote := testenv.TCPPair(t)
		upLocal, upRemote := testenv.TCPPair(t)
		out := &fakeOutbound{name: "up", dial: func(string) (net.Conn, error) { return upLocal, nil }}
		r, flows := newRouter(t, Static(out), func(c *Config) { c.Poller = pl })
		req := &detachReq{fakeReq: newFakeReq("10.0.0.1:80"), done: make(chan struct{})}
		req.app = appKinds[tc.kind](appLocal)
		r.handleTCP(context.Background(), nil, req) // returns with the flow open
		if !req.detached.Load() {
			t.Fatal("handleTCP did not detach a request that can")
		}
		if n := len(r.Flows()); n != 1 || r.Stats().TCPOpen.Load() != 1 {
			t.Fatalf("after handleTCP returned: %d flows in the table, TCPOpen %d; want the flow open", n, r.Stats().TCPOpen.Load())
		}
		appRemote.Write([]byte("ping"))
		buf := make([]byte, 4)
		upRemote.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(upRemote, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("upstream got %q, %v", buf, err)
		}
		upRemote.Write([]byte("pong!"))
		buf = make([]byte, 5)
		appRemote.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(appRemote, buf); err != nil || string(buf) != "pong!" {
			t.Fatalf("app got %q, %v", buf, err)
		}
		if tc.kind == "system" && appFirst {
			// Parked both ways after the relay's ParkAfter (2 s).
			got := 0
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
				if got = flowGoroutines(); got == 0 {
					break
				}
			}
			if got != 0 {
				t.Fatalf("an idle detached system-stack flow holds %d goroutines, want none", got)
			}
		}
		first, second := appRemote, upRemote
		if !appFirst {
			first, second = upRemote, appRemote
		}
		first.Close()
		second.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := second.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("the other side read %v after one side closed, want io.EOF", err)
		}
		second.Close()
		select {
		case rec := <-flows:
			if rec.Up != 4 || rec.Down != 5 || rec.Err != nil || rec.ID == "" {
				t.Fatalf("%s, app first %v: flow record %+v, want 4 up, 5 down, no error, its id", tc.kind, appFirst, rec)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s, app first %v: the detached flow never ended", tc.kind, appFirst)
		}
		select {
		case <-req.done:
		case <-time.After(10 * time.Second):
			t.Fatal("the request's done was never called")
		}
		if n := len(r.Flows()); n != 0 || r.Stats().TCPOpen.Load() != 0 || req.calls.Load() != 1 {
			t.Fatalf("after the end: %d flows in the table, TCPOpen %d, done called %d times", n, r.Stats().TCPOpen.Load(), req.calls.Load())
		}
	}
}

// TestTCPDetachedFlowShed: ShedIdle ends a detached flow (it has no
// context of its own to cancel) with a reset to the app, and its record
// says it was shed.
func TestTCPDetachedFlowShed(t *testing.T) {
	for kind := range appKinds {
		t.Run(kind, func(t *testing.T) { testTCPDetachedFlowShed(t, kind) })
	}
}

func testTCPDetachedFlowShed(t *testing.T, kind string) {
	pl, err := relay.NewPoller()
	if err != nil {
		t.Skipf("no relay poller here: %v", err)
	}
	defer pl.Close()
	appLocal, appRemote := testenv.TCPPair(t)
	upLocal, upRemote := testenv.TCPPair(t)
	out := &fakeOutbound{name: "up", dial: func(string) (net.Conn, error) { return upLocal, nil }}
	r, flows := newRouter(t, Static(out), func(c *Config) { c.Poller = pl })
	req := &detachReq{fakeReq: newFakeReq("10.0.0.1:80"), done: make(chan struct{})}
	req.app = appKinds[kind](appLocal)
	r.handleTCP(context.Background(), nil, req)
	if kind == "system" {
		// Shed while parked both ways (after ParkAfter, 2 s).
		for deadline := time.Now().Add(10 * time.Second); flowGoroutines() != 0; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the idle flow never parked")
			}
		}
	}
	if n := r.ShedIdle(1); n != 1 {
		t.Fatalf("ShedIdle(1) with one detached flow closed %d", n)
	}
	select {
	case rec := <-flows:
		if !errors.Is(rec.Err, ErrShed) || rec.Dst.String() != "10.0.0.1:80" || rec.Outbound != "up" {
			t.Fatalf("shed flow's record %+v, want 10.0.0.1:80 through up, shed", rec)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the shed flow never ended")
	}
	testenv.Recv(t, req.done, "the handler's return")
	// The app's connection is reset, so the netstack frees it at once
	// (a FIN would leave it waiting for the app's); the upstream's ends.
	appRemote.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(appRemote); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("after the shed, the app read %v, want a reset", err)
	}
	upRemote.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(upRemote); err != nil {
		t.Fatalf("after the shed, the upstream read %v, want the end of the stream", err)
	}
}
