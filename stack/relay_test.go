package stack_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"runtime/metrics"
	"strings"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/relay"
	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/stack"
)

// relayedThroughStack accepts n app connections through the stack and
// relays each with relay.Stream to a TCP socket pair, as the router does;
// it returns the app's ends, the remote ends and the Streams' results.
func relayedThroughStack(t *testing.T, n int, opts relay.StreamOptions) (apps []net.Conn, remotes []*net.TCPConn, results chan error) {
	t.Helper()
	results = make(chan error, n)
	ups := make(chan *net.TCPConn, n)
	e := setup(t, handlerFuncs{tcp: func(ctx context.Context, r *stack.TCPRequest) {
		up := <-ups // before Accept: the next dial waits for this one's
		c, err := r.Accept()
		if err != nil {
			t.Error(err)
			return
		}
		_, _, err = relay.Stream(ctx, c, up, opts)
		results <- err
	}}, nil)
	for range n {
		up, remote := testenv.TCPPair(t)
		ups <- up
		app, err := e.app.DialTCP(e.ctx, netip.MustParseAddrPort("198.18.0.1:80"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { app.Close() })
		apps, remotes = append(apps, app), append(remotes, remote)
	}
	return apps, remotes, results
}

// echoBoth sends one byte each way through a relay and checks it arrives.
func echoBoth(t *testing.T, app net.Conn, remote *net.TCPConn, b byte) {
	t.Helper()
	for _, d := range [][2]net.Conn{{app, remote}, {remote, app}} {
		if _, err := d[0].Write([]byte{b}); err != nil {
			t.Fatal(err)
		}
		d[1].SetReadDeadline(time.Now().Add(10 * time.Second))
		var got [1]byte
		if _, err := io.ReadFull(d[1], got[:]); err != nil || got[0] != b {
			t.Fatalf("relayed %v, %v; want %v", got, err, b)
		}
	}
}

// TestRelayIdleParksWithoutGoroutine: a relay between a netstack connection
// and a kernel socket keeps one goroutine while idle (the direction
// reading the kernel socket, parked in the runtime poller); the direction
// reading the netstack connection parks on its notification. Before,
// each idle relay kept two.
func TestRelayIdleParksWithoutGoroutine(t *testing.T) {
	const n = 40
	base := runtime.NumGoroutine()
	apps, remotes, _ := relayedThroughStack(t, n, relay.StreamOptions{Idle: time.Minute})
	for i := range apps {
		echoBoth(t, apps[i], remotes[i], byte(i))
	}
	// The app side's dialer and the stack's own goroutines are there for
	// every connection or none; what is counted is per relay.
	var per float64
	for range 50 {
		per = float64(runtime.NumGoroutine()-base) / n
		if per < 1.5 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if per >= 1.5 {
		t.Errorf("%.2f goroutines per idle relay, want about 1", per)
	}
	// Parked relays still carry data both ways, also more than a buffer.
	for i := range 3 {
		echoBoth(t, apps[i], remotes[i], 0xee)
		sendBig(t, apps[i], remotes[i], fmt.Sprintf("relay %d, app->remote after parking", i))
	}
}

// sendBig writes 200 KiB, more than a relay buffer, into from and reads
// them whole from to, for up to 10 s.
func sendBig(t *testing.T, from, to net.Conn, what string) {
	t.Helper()
	big := make([]byte, 200<<10)
	go from.Write(big)
	to.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(to, make([]byte, len(big))); err != nil {
		t.Fatalf("%s, 200 KiB: %v", what, err)
	}
}

// TestRelayParkedIdleTimeout: a pair whose app side is parked is closed by
// the idle timer, also after the remote side has half-closed (its own
// reader has ended, so only the parked direction's timer is left).
func TestRelayParkedIdleTimeout(t *testing.T) {
	apps, remotes, results := relayedThroughStack(t, 1, relay.StreamOptions{Idle: 200 * time.Millisecond})
	echoBoth(t, apps[0], remotes[0], 1)
	remotes[0].CloseWrite()
	apps[0].SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := apps[0].Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("app read after the remote's FIN = %v, want io.EOF", err)
	}
	select {
	case err := <-results:
		if !errors.Is(err, relay.ErrIdle) {
			t.Fatalf("Stream = %v, want ErrIdle", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("idle parked pair never closed")
	}
}

// TestRelayParkedAppFIN: the app's FIN reaches a parked direction, which
// passes it on; the remote's answer still comes back.
func TestRelayParkedAppFIN(t *testing.T) {
	apps, remotes, results := relayedThroughStack(t, 1, relay.StreamOptions{Idle: time.Minute})
	echoBoth(t, apps[0], remotes[0], 2)
	apps[0].(interface{ CloseWrite() error }).CloseWrite()
	remotes[0].SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := remotes[0].Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("remote read after the app's FIN = %v, want io.EOF", err)
	}
	if _, err := remotes[0].Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	remotes[0].Close()
	apps[0].SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, err := io.ReadAll(apps[0]); string(got) != "bye" || err != nil {
		t.Fatalf("app got %q, %v after its FIN; want bye", got, err)
	}
	select {
	case err := <-results:
		if err != nil {
			t.Fatalf("Stream = %v, want a clean end", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Stream did not end after both FINs")
	}
}

// TestRelayParkedOnPollerShrinksStacks: with a relay.Poller, an idle
// relay's upstream direction parks without a goroutine and the handler's
// goroutine waits in a frame shallow enough that collections halve its
// 8 KiB stack (relay.Stream's callers that do not detach). Without the
// Poller the handler's goroutine reads the upstream itself, too deep for
// its stack to shrink below 8 KiB. The app side's own goroutines are in
// both. It measures in a process of its own: the runtime sizes new
// goroutines' stacks from what the earlier tests' goroutines used
// (adaptive stack start), which made the figures of a run of the whole
// package swing by several KiB.
func TestRelayParkedOnPollerShrinksStacks(t *testing.T) {
	if raceEnabled {
		t.Skip("frame sizes under the race detector are not the ones this is about")
	}
	if os.Getenv("STACK_TEST_ALONE") == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestRelayParkedOnPollerShrinksStacks$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), "STACK_TEST_ALONE=1")
		out, err := cmd.CombinedOutput()
		t.Logf("in a process of its own:\n%s", out)
		if err != nil {
			t.Fatalf("alone: %v", err)
		}
		return
	}
	pl, err := relay.NewPoller()
	if err != nil {
		t.Skipf("no relay poller here: %v", err)
	}
	t.Cleanup(func() { pl.Close() })
	const n = 100
	// stacksPer opens n idle relays with opts and returns the goroutine
	// stack bytes they added, per relay, once collections have shrunk
	// what they can.
	stacksPer := func(opts relay.StreamOptions) float64 {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		apps, remotes, _ := relayedThroughStack(t, n, opts)
		for i := range apps {
			echoBoth(t, apps[i], remotes[i], byte(i))
		}
		time.Sleep(300 * time.Millisecond) // upstream directions park
		for range 4 {
			runtime.GC()
		}
		runtime.ReadMemStats(&after)
		// Parked relays still carry data both ways, the upstream's too.
		for i := range 3 {
			echoBoth(t, apps[i], remotes[i], 0xee)
		}
		return float64(int64(after.StackInuse)-int64(before.StackInuse)) / n
	}
	plain := stacksPer(relay.StreamOptions{Idle: time.Minute})
	parked := stacksPer(relay.StreamOptions{Idle: time.Minute, Poller: pl, ParkAfter: 50 * time.Millisecond})
	t.Logf("goroutine stacks per idle relay: %.0f bytes without a Poller, %.0f with", plain, parked)
	if parked > plain-4<<10 {
		t.Errorf("a Poller saves %.0f bytes of goroutine stack per idle relay, want at least 4 KiB", plain-parked)
	}
}

// detachedThroughStack is relayedThroughStack with the router's
// goroutine-less relay: each Handler accepts, detaches and starts
// relay.StreamAsync on a Poller, and returns; ends gets each flow's end
// after its done.
func detachedThroughStack(t *testing.T, n int, opts relay.StreamOptions) (e *env, apps []net.Conn, remotes []*net.TCPConn, ends chan error) {
	t.Helper()
	return detachedThroughStackWith(t, n, opts, nil)
}

// detachedThroughStackWith is detachedThroughStack with the stack's
// configuration changed by tweak (when not nil).
func detachedThroughStackWith(t *testing.T, n int, opts relay.StreamOptions, tweak func(*stack.Config)) (e *env, apps []net.Conn, remotes []*net.TCPConn, ends chan error) {
	t.Helper()
	pl, err := relay.NewPoller()
	if err != nil {
		t.Skipf("no relay poller here: %v", err)
	}
	opts.Poller = pl
	ends = make(chan error, n)
	ups := make(chan *net.TCPConn, n)
	e = setup(t, handlerFuncs{tcp: func(ctx context.Context, r *stack.TCPRequest) {
		up := <-ups
		c, err := r.Accept()
		if err != nil {
			t.Error(err)
			return
		}
		// As the router does: stop closes both connections.
		done := r.Detach(func() {
			c.Close()
			up.Close()
		})
		if ctx.Err() == nil {
			t.Error("the Handler's context is live after Detach; a detached flow should hold none")
		}
		if !relay.StreamAsync(context.WithoutCancel(ctx), c, up, opts, func(_, _ int64, err error) {
			// The end is recorded before done: Stack.Close returns once
			// done is called, and TestDetachedFlowEndsWhenParked then
			// looks for it.
			ends <- err
			done()
		}) {
			t.Error("StreamAsync did not take a netstack conn to a kernel socket")
			done()
		}
	}}, tweak)
	t.Cleanup(func() { pl.Close() }) // after the stack's Close (cleanups run last first)
	for range n {
		up, remote := testenv.TCPPair(t)
		ups <- up
		app, err := e.app.DialTCP(e.ctx, netip.MustParseAddrPort("198.18.0.1:80"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { app.Close() })
		apps, remotes = append(apps, app), append(remotes, remote)
	}
	return e, apps, remotes, ends
}

// flowGoroutines counts the goroutines in a Handler or a relay (the
// Poller's own excepted).
func flowGoroutines() int {
	return testenv.Goroutines(func(g string) bool {
		if strings.Contains(g, "relay.(*Poller).loop") {
			return false // the one Poller's
		}
		if strings.Contains(g, "relay.(*workers).work") && !strings.Contains(g, "relay.(*notifiedHalf).run") {
			return false // a Poller's worker waiting, shared by all flows
		}
		return strings.Contains(g, "stack.(*Stack).handleRequest") || strings.Contains(g, "internal/relay.")
	})
}

// TestDetachedIdleFlowHoldsNoGoroutine: with the Handler detached and the
// relay started by StreamAsync, an idle flow holds no goroutine at all
// (before: the Handler's, waiting in relay.Stream, one per flow), and
// its bytes still move both ways afterwards.
func TestDetachedIdleFlowHoldsNoGoroutine(t *testing.T) {
	const n = 40
	_, apps, remotes, _ := detachedThroughStack(t, n, relay.StreamOptions{Idle: time.Minute, ParkAfter: 20 * time.Millisecond})
	for i := range apps {
		echoBoth(t, apps[i], remotes[i], byte(i))
	}
	var got int
	for range 100 {
		if got = flowGoroutines(); got == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got != 0 {
		t.Errorf("%d goroutines in handlers or relays with %d idle detached flows, want none", got, n)
	}
	for i := range 3 {
		echoBoth(t, apps[i], remotes[i], 0xee)
		sendBig(t, remotes[i], apps[i], fmt.Sprintf("flow %d, remote->app after parking", i))
	}
}

// A request of a round trip through a relay on a Poller goes upstream
// without a goroutine started for it: the direction that reads the app
// runs on one of the Poller's workers, which waits for the next request
// with its stack grown, instead of a goroutine started (and its stack
// grown and copied) at every notification. Before: at least one
// goroutine created per request (seen: 200 for 200 round trips).
func TestRelayRoundTripStartsNoGoroutine(t *testing.T) {
	const trips = 200
	// No ACK delay: its timer starts a goroutine each time it fires
	// (time.AfterFunc), every 20 ms while round trips go on, and a
	// loaded machine may take seconds for these.
	noAckDelay := func(c *stack.Config) { c.TCP.AckDelay = -1 }
	_, apps, remotes, _ := detachedThroughStackWith(t, 1, relay.StreamOptions{Idle: time.Minute}, noAckDelay)
	app, remote := apps[0], remotes[0]
	buf := make([]byte, 1)
	trip := func(b byte) {
		if _, err := app.Write([]byte{b}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(remote, buf); err != nil || buf[0] != b {
			t.Fatalf("remote read %v, %v; want %d", buf, err, b)
		}
		if _, err := remote.Write(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(app, buf); err != nil || buf[0] != b {
			t.Fatalf("app read %v, %v; want %d", buf, err, b)
		}
	}
	for i := range 10 { // the worker starts, the flow settles
		trip(byte(i))
	}
	created := func() uint64 {
		m := []metrics.Sample{{Name: "/sched/goroutines-created:goroutines"}}
		metrics.Read(m)
		return m[0].Value.Uint64()
	}
	before := created()
	for i := range trips {
		trip(byte(i))
	}
	// Other timers of the stack's and the app side's may start a few.
	if n := created() - before; n > trips/10 {
		t.Errorf("%d goroutines started over %d round trips, want at most %d", n, trips, trips/10)
	}
}

// TestDetachedFlowEndsWhenParked: a detached flow, both directions
// parked, ends (its done called) when the app closes first, when the
// remote closes first, and when the stack closes (it calls the flow's
// stop), whose Close waits for it.
func TestDetachedFlowEndsWhenParked(t *testing.T) {
	e, apps, remotes, ends := detachedThroughStack(t, 3, relay.StreamOptions{Idle: time.Minute, ParkAfter: 20 * time.Millisecond})
	for i := range apps {
		echoBoth(t, apps[i], remotes[i], byte(i))
	}
	parked := func() {
		t.Helper()
		for range 250 {
			if flowGoroutines() == 0 {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatal("the flows never parked")
	}
	wait := func(what string) {
		t.Helper()
		select {
		case err := <-ends:
			if err != nil {
				t.Fatalf("%s: flow ended with %v, want a clean end", what, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the parked flow never ended", what)
		}
	}
	// eof reads the end of c's stream, passed on by the relay.
	eof := func(c net.Conn) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("read after the other side closed = %v, want io.EOF", err)
		}
	}
	parked()
	apps[0].Close()
	eof(remotes[0])
	remotes[0].Close()
	wait("app closed first")
	parked()
	remotes[1].Close()
	eof(apps[1])
	apps[1].Close()
	wait("remote closed first")
	parked()
	if err := e.s.Close(); err != nil {
		t.Fatalf("stack Close with a detached flow: %v", err)
	}
	select {
	case <-ends:
	default:
		t.Fatal("stack Close returned before the detached flow's done")
	}
}

// directRelay accepts one app connection through the stack and relays it
// with relay.Stream to a kernel TCP socket whose send buffer is tiny (the
// relay's direct path, stack segments written straight to the socket,
// keeps meeting a full buffer); it returns the app's end, the remote end
// and the Stream's result.
func directRelay(t *testing.T) (app net.Conn, remote *net.TCPConn, result chan error) {
	t.Helper()
	result = make(chan error, 1)
	up, remote := testenv.TCPPair(t)
	if err := up.SetWriteBuffer(4 << 10); err != nil {
		t.Fatal(err)
	}
	e := setup(t, handlerFuncs{tcp: func(ctx context.Context, r *stack.TCPRequest) {
		c, err := r.Accept()
		if err != nil {
			t.Error(err)
			return
		}
		if _, ok := c.(relay.DirectReader); !ok {
			t.Error("a gVisor connection is not a relay.DirectReader")
		}
		_, _, err = relay.Stream(ctx, c, up, relay.StreamOptions{Idle: time.Minute})
		result <- err
	}}, nil)
	app, err := e.app.DialTCP(e.ctx, netip.MustParseAddrPort("198.18.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close() })
	return app, remote, result
}

// pattern is n bytes no shifted copy of which matches itself: a lost,
// repeated or reordered piece shows.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>11 + i>>19)
	}
	return b
}

// The app's bytes reach the upstream socket once each and in order when
// the relay writes them from the stack's segments straight to a socket
// whose send buffer keeps filling (tiny SO_SNDBUF, a slow reader): what
// the socket does not take stays in the stack for the next write. The
// app's FIN follows them, and the remote's answer and FIN come back.
func TestRelayDirectUploadKeepsEveryByte(t *testing.T) {
	app, remote, result := directRelay(t)
	msg := pattern(8 << 20)
	werr := make(chan error, 1)
	go func() {
		_, err := app.Write(msg)
		if err == nil {
			err = app.(interface{ CloseWrite() error }).CloseWrite()
		}
		werr <- err
	}()
	remote.SetReadDeadline(time.Now().Add(60 * time.Second))
	var got []byte
	buf := make([]byte, 1500)
	for i := 0; ; i++ {
		n, err := remote.Read(buf)
		got = append(got, buf[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("remote read after %d bytes: %v", len(got), err)
		}
		if i%256 == 0 {
			time.Sleep(time.Millisecond) // slow: the relay's socket fills
		}
	}
	if err := testenv.Recv(t, werr, "the writer's end"); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		i := 0
		for i < min(len(got), len(msg)) && got[i] == msg[i] {
			i++
		}
		t.Fatalf("remote got %d bytes, want the %d sent, once each and in order (first difference at %d)", len(got), len(msg), i)
	}
	if _, err := remote.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	remote.Close()
	app.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(app); string(b) != "bye" || err != nil {
		t.Fatalf("app got %q, %v; want bye and the end", b, err)
	}
	select {
	case err := <-result:
		if err != nil {
			t.Fatalf("Stream = %v, want a clean end", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Stream did not end after both FINs")
	}
}

// A reset from the upstream ends a direct-path relay in the middle of an
// upload with an error, and the app's connection ends too.
func TestRelayDirectUploadUpstreamReset(t *testing.T) {
	app, remote, result := directRelay(t)
	go app.Write(pattern(8 << 20))
	remote.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(remote, make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	remote.SetLinger(0)
	remote.Close() // RST
	select {
	case err := <-result:
		if err == nil {
			t.Fatal("Stream ended cleanly after the upstream's reset")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Stream did not end after the upstream's reset")
	}
	app.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, app); err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the app's connection did not end: %v", err)
	}
}

// A small write to a netstack connection (a round trip's reply) adds no
// allocation of its own to what gVisor's endpoint allocates: gonet's
// Write allocated a bytes.Reader and a waiter.Entry on every call. The
// same writes with a write deadline set go through gonet's Write, which
// keeps the deadline: their count shows what Write saves.
func TestTCPSmallWriteAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector drops pooled items at random")
	}
	app, c := acceptedConn(t)
	buf := make([]byte, 1)
	one := []byte{'x'}
	trip := func() {
		if _, err := c.Write(one); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(app, buf); err != nil {
			t.Fatal(err)
		}
	}
	trip()
	direct := testing.AllocsPerRun(200, trip)
	if err := c.SetWriteDeadline(time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	viaGonet := testing.AllocsPerRun(200, trip)
	t.Logf("allocations per 1-byte write and app read: %.1f, %.1f through gonet's Write", direct, viaGonet)
	// 2 fewer here; 1 leaves room for the other goroutines' noise.
	if direct >= viaGonet {
		t.Errorf("a 1-byte Write allocates %.1f, want fewer than gonet's Write (%.1f)", direct, viaGonet)
	}
}

// TestTCPConcurrentSmallWrites: small Writes from several goroutines at
// once all arrive whole (a message is never split or mixed with
// another's): the connection's own reader serves one Write at a time,
// the others take one from the pool.
func TestTCPConcurrentSmallWrites(t *testing.T) {
	app, c := acceptedConn(t)
	const writers, each, size = 4, 200, 64
	errs := make(chan error, writers)
	for w := range writers {
		go func() {
			msg := bytes.Repeat([]byte{byte('a' + w)}, size)
			for range each {
				if _, err := c.Write(msg); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	app.SetReadDeadline(time.Now().Add(time.Minute))
	got := make([]byte, writers*each*size)
	if _, err := io.ReadFull(app, got); err != nil {
		t.Fatal(err)
	}
	for range writers {
		if err := testenv.Recv(t, errs, "a writer's end"); err != nil {
			t.Fatal(err)
		}
	}
	counts := make(map[byte]int)
	for i := 0; i < len(got); i += size {
		m := got[i : i+size]
		if !bytes.Equal(m, bytes.Repeat(m[:1], size)) {
			t.Fatalf("message at %d mixes writers: %q", i, m)
		}
		counts[m[0]]++
	}
	for w := range writers {
		if n := counts[byte('a'+w)]; n != each {
			t.Errorf("writer %d: %d messages arrived, want %d", w, n, each)
		}
	}
}
