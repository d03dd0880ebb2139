package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pipePair is a non-TCP pair (net.Pipe has no CloseWrite and no ReadFrom).
type pipeHalf struct{ net.Conn }

// relayed builds app <-> [a | relay | b] <-> remote over TCP and runs Stream.
func relayed(t *testing.T, opts StreamOptions) (app, remote *net.TCPConn, done <-chan [3]any, cancel func()) {
	t.Helper()
	app, a := testenv.TCPPair(t)
	b, remote := testenv.TCPPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan [3]any, 1)
	go func() {
		up, down, err := Stream(ctx, a, b, opts)
		ch <- [3]any{up, down, err}
	}()
	t.Cleanup(cancel)
	return app, remote, ch, cancel
}

func TestStreamHalfCloseBothWays(t *testing.T) {
	var upCount, downCount atomic.Int64
	app, remote, done, _ := relayed(t, StreamOptions{Up: &upCount, Down: &downCount})
	data := make([]byte, 3<<20)
	rand.Read(data)

	// app sends everything and half-closes; remote must see EOF, and can
	// still answer afterwards.
	go func() { app.Write(data); app.CloseWrite() }()
	got, err := io.ReadAll(remote)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("remote read %d bytes, err %v", len(got), err)
	}
	if _, err := remote.Write([]byte("reply after FIN")); err != nil {
		t.Fatal(err)
	}
	remote.CloseWrite()
	back, err := io.ReadAll(app)
	if err != nil || string(back) != "reply after FIN" {
		t.Fatalf("app read %q, %v", back, err)
	}
	r := testenv.Recv(t, done, "the relay's return")
	if r[0].(int64) != int64(len(data)) || r[1].(int64) != 15 || r[2] != nil {
		t.Fatalf("Stream = %v", r)
	}
	if upCount.Load() != int64(len(data)) || downCount.Load() != 15 {
		t.Fatalf("counters up=%d down=%d", upCount.Load(), downCount.Load())
	}
}

func TestStreamNonTCPHalfClose(t *testing.T) {
	// One side without CloseWrite (net.Pipe): the relay closes it at EOF
	// instead, and the other direction still drains.
	app, a := testenv.TCPPair(t)
	p1, p2 := net.Pipe()
	done := make(chan error, 1)
	go func() { _, _, err := Stream(context.Background(), a, pipeHalf{p1}, StreamOptions{}); done <- err }()
	go func() { app.Write([]byte("hello")); app.CloseWrite() }()
	got, _ := io.ReadAll(p2)
	if string(got) != "hello" {
		t.Fatalf("pipe side read %q", got)
	}
	p2.Close()
	if _, err := io.ReadAll(app); err != nil {
		t.Fatal(err)
	}
	if err := testenv.Recv(t, done, "the relay's return"); err != nil {
		t.Fatal(err)
	}
}

func TestStreamIdle(t *testing.T) {
	// The idle period is long against the 60 ms between bytes (a loaded
	// machine's scheduling delays must not make the pair look idle).
	app, remote, done, _ := relayed(t, StreamOptions{Idle: 600 * time.Millisecond})
	// Activity in one direction keeps the pair alive past several idle periods.
	for i := 0; i < 20; i++ {
		if _, err := app.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1)
		if _, err := io.ReadFull(remote, buf); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		time.Sleep(60 * time.Millisecond)
	}
	select {
	case r := <-done:
		t.Fatalf("relay ended while active: %v", r)
	default:
	}
	r := testenv.Recv(t, done, "the relay's return") // then idleness ends it
	if !errors.Is(r[2].(error), ErrIdle) {
		t.Fatalf("Stream error = %v, want ErrIdle", r[2])
	}
	if _, err := app.Read(make([]byte, 1)); err == nil {
		t.Fatal("app conn still open after idle close")
	}
}

func TestStreamCancel(t *testing.T) {
	_, _, done, cancel := relayed(t, StreamOptions{})
	cancel()
	if r := testenv.Recv(t, done, "the relay's return"); r[2] != nil {
		t.Fatalf("cancelled Stream error = %v, want nil", r[2])
	}
}

func TestStreamResetEndsBoth(t *testing.T) {
	app, remote, done, _ := relayed(t, StreamOptions{})
	remote.SetLinger(0)
	remote.Close() // RST toward the relay
	testenv.Recv(t, done, "the relay's return")
	app.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := app.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("app read after remote reset: %v", err)
	}
}

func TestPackets(t *testing.T) {
	in := make(chan []byte, 4)
	out := make(chan []byte, 4)
	closed := make(chan struct{})
	up := func(buf []byte) (int, error) {
		select {
		case p := <-in:
			out <- p
			return len(p), nil
		case <-closed:
			return 0, net.ErrClosed
		}
	}
	down := func(buf []byte) (int, error) { <-closed; return 0, net.ErrClosed }
	var upCount atomic.Int64
	done := make(chan [3]any, 1)
	go func() {
		u, d, err := Packets(context.Background(), PacketOptions{Idle: 500 * time.Millisecond, Up: &upCount}, up, down, func() { close(closed) })
		done <- [3]any{u, d, err}
	}()
	// 40 ms between datagrams against an idle period of 500 ms: a loaded
	// machine's scheduling delays must not make the relay look idle.
	for i := 0; i < 20; i++ {
		in <- []byte("ping")
		testenv.Recv(t, out, "the datagram relayed up")
		time.Sleep(40 * time.Millisecond)
	}
	r := testenv.Recv(t, done, "the relay's return")
	if r[0].(int64) != 80 || upCount.Load() != 80 || !errors.Is(r[2].(error), ErrIdle) {
		t.Fatalf("Packets = %v (counter %d)", r, upCount.Load())
	}
}

// TestPacketsActivityClock: datagrams moved outside the two pumps, noted
// on the Activity clock, keep an idle relay alive.
func TestPacketsActivityClock(t *testing.T) {
	closed := make(chan struct{})
	wait := func([]byte) (int, error) { <-closed; return 0, net.ErrClosed }
	var clock atomic.Int64
	done := make(chan error, 1)
	go func() {
		_, _, err := Packets(context.Background(), PacketOptions{Idle: time.Second, Activity: &clock}, wait, wait, func() { close(closed) })
		done <- err
	}()
	// Two idle periods' worth of outside activity, refreshed every 30 ms:
	// the idle period is long against the refresh so a loaded machine's
	// scheduling delays cannot make the clock look stale.
	for range 70 {
		clock.Store(time.Now().UnixNano())
		select {
		case err := <-done:
			t.Fatalf("relay ended (%v) while the activity clock moved", err)
		case <-time.After(30 * time.Millisecond):
		}
	}
	if err := testenv.Recv(t, done, "the relay's return"); !errors.Is(err, ErrIdle) {
		t.Fatalf("after the activity stopped: %v, want ErrIdle", err)
	}
}

func TestPacketsCancel(t *testing.T) {
	closed := make(chan struct{})
	wait := func([]byte) (int, error) { <-closed; return 0, net.ErrClosed }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, _, err := Packets(ctx, PacketOptions{}, wait, wait, func() { close(closed) })
		done <- err
	}()
	cancel()
	if err := testenv.Recv(t, done, "the relay's return"); err != nil {
		t.Fatalf("cancelled Packets error = %v", err)
	}
}

// BenchmarkStreamTCP measures the relay between two loopback TCP pairs (the
// splice path). Run: go test -bench StreamTCP ./internal/relay/
func BenchmarkStreamTCP(b *testing.B) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	pair := func() (net.Conn, net.Conn) {
		c, _ := net.Dial("tcp", ln.Addr().String())
		s, _ := ln.Accept()
		return c, s
	}
	app, a := pair()
	bb, remote := pair()
	go Stream(context.Background(), a, bb, StreamOptions{})
	buf := make([]byte, 256<<10)
	b.SetBytes(int64(len(buf)))
	go func() {
		for i := 0; i < b.N; i++ {
			app.Write(buf)
		}
		app.(*net.TCPConn).CloseWrite()
	}()
	b.ResetTimer()
	n, _ := io.Copy(io.Discard, remote)
	if n != int64(b.N*len(buf)) {
		b.Fatalf("copied %d", n)
	}
	app.Close()
	remote.Close()
}

func TestStreamHalfCloseTimer(t *testing.T) {
	// The app finishes its side; the remote never does. HalfClose ends the
	// pair anyway, cleanly, whichever direction finished first.
	app, remote, done, _ := relayed(t, StreamOptions{HalfClose: 100 * time.Millisecond})
	app.CloseWrite()
	if _, err := io.ReadAll(remote); err != nil {
		t.Fatalf("remote did not see the app's FIN: %v", err)
	}
	select {
	case r := <-done:
		if r[2] != nil {
			t.Fatalf("Stream error = %v, want nil", r[2])
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the half-closed pair was never closed")
	}
	app.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := app.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("app read after the half-close timer: %v", err)
	}
}

func TestStreamIdleNonSplice(t *testing.T) {
	// One side is not a TCP socket, so both directions copy through a
	// buffer and the idle deadline is the plain read deadline.
	app, a := testenv.TCPPair(t)
	p1, p2 := net.Pipe()
	done := make(chan error, 1)
	go func() {
		_, _, err := Stream(context.Background(), a, pipeHalf{p1}, StreamOptions{Idle: 600 * time.Millisecond})
		done <- err
	}()
	// Bytes only ever flow pipe -> app: the app->pipe direction's deadline
	// fires again and again, and must read on while the other one is busy
	// (60 ms between bytes, long against the idle period for a loaded
	// machine).
	for i := 0; i < 20; i++ {
		if _, err := p2.Write([]byte("y")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(app, make([]byte, 1)); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		time.Sleep(60 * time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("relay ended while active: %v", err)
	default:
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrIdle) {
			t.Fatalf("Stream error = %v, want ErrIdle", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("idle pair never closed")
	}
	p2.Close()
}

// kernelWrapped hides a *net.TCPConn behind a wrapper that counts its own
// Reads and Writes and exposes the socket through KernelConn.
type kernelWrapped struct {
	*net.TCPConn
	calls atomic.Int64
}

func (k *kernelWrapped) Read(p []byte) (int, error)  { k.calls.Add(1); return k.TCPConn.Read(p) }
func (k *kernelWrapped) Write(p []byte) (int, error) { k.calls.Add(1); return k.TCPConn.Write(p) }
func (k *kernelWrapped) KernelConn() *net.TCPConn    { return k.TCPConn }

func TestStreamSplicesKernelConner(t *testing.T) {
	app, a := testenv.TCPPair(t)
	b, remote := testenv.TCPPair(t)
	w := &kernelWrapped{TCPConn: a}
	done := make(chan error, 1)
	go func() { _, _, err := Stream(context.Background(), w, b, StreamOptions{Idle: time.Minute}); done <- err }()
	data := make([]byte, 1<<20)
	rand.Read(data)
	go func() { app.Write(data); app.CloseWrite() }()
	got, err := io.ReadAll(remote)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("remote read %d bytes, %v", len(got), err)
	}
	remote.Write([]byte("back"))
	remote.CloseWrite()
	if back, _ := io.ReadAll(app); string(back) != "back" {
		t.Fatalf("app read %q", back)
	}
	if err := testenv.Recv(t, done, "the relay's return"); err != nil {
		t.Fatal(err)
	}
	if n := w.calls.Load(); n != 0 {
		t.Errorf("the wrapper's Read/Write ran %d times; the relay should splice on its kernel socket", n)
	}
}

// BenchmarkStreamShort measures short relays: each carries one small
// request and its answer, then both ends close (the connection-rate case).
// Run: go test -run '^$' -bench StreamShort ./internal/relay/
func BenchmarkStreamShort(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	pair := func() (net.Conn, net.Conn) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			b.Fatal(err)
		}
		return c, s
	}
	req, resp := make([]byte, 300), make([]byte, 1500)
	b.ResetTimer()
	for range b.N {
		app, a := pair()
		bb, remote := pair()
		done := make(chan struct{})
		go func() { Stream(context.Background(), a, bb, StreamOptions{}); close(done) }()
		app.Write(req)
		io.ReadFull(remote, req)
		remote.Write(resp)
		io.ReadFull(app, resp)
		app.Close()
		remote.Close()
		testenv.Recv(b, done, "the relay's return")
	}
}

func TestStreamActivityClock(t *testing.T) {
	// The caller's clock is set at the start and moves with the bytes,
	// spliced or not.
	var clock atomic.Int64
	app, remote, _, cancel := relayed(t, StreamOptions{Activity: &clock})
	defer cancel()
	deadline := time.Now().Add(10 * time.Second)
	for clock.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	start := clock.Load()
	if start == 0 {
		t.Fatal("the clock was never set")
	}
	time.Sleep(5 * time.Millisecond)
	app.Write([]byte("x"))
	if _, err := io.ReadFull(remote, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	for clock.Load() == start && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if clock.Load() <= start {
		t.Fatalf("the clock did not move with a byte: %d, started at %d", clock.Load(), start)
	}
}

// TestPacketsWaitBeforeBuffer: a pump with a wait function is called only
// after its wait returned, once per wait (its buffer is taken for that one
// datagram), and a wait's error ends the relay; the up pump runs on the
// caller's goroutine, so a relay of two blocked pumps adds one goroutine.
func TestPacketsWaitBeforeBuffer(t *testing.T) {
	closed := make(chan struct{})
	ready := make(chan struct{})
	var waits, calls atomic.Int64
	upWait := func() error {
		waits.Add(1)
		select {
		case <-ready:
			return nil
		case <-closed:
			return net.ErrClosed
		}
	}
	up := func(buf []byte) (int, error) {
		if calls.Add(1) != waits.Load() {
			t.Errorf("up pump called %d times after %d waits", calls.Load(), waits.Load())
		}
		if len(buf) != MaxDatagram {
			t.Errorf("up pump buffer %d bytes, want %d", len(buf), MaxDatagram)
		}
		return 1, nil
	}
	down := func([]byte) (int, error) { <-closed; return 0, net.ErrClosed }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan [3]any, 1)
	go func() {
		u, d, err := Packets(ctx, PacketOptions{UpWait: upWait}, up, down, func() { close(closed) })
		done <- [3]any{u, d, err}
	}()
	for range 3 {
		ready <- struct{}{}
	}
	for waits.Load() < 4 {
		time.Sleep(time.Millisecond)
	}
	if n := goroutinesIn("relay.Packets"); n != 2 {
		t.Errorf("a relay of two blocked pumps runs %d goroutines (with its caller's), want 2", n)
	}
	cancel()
	r := testenv.Recv(t, done, "the relay's return")
	if r[0].(int64) != 3 || calls.Load() != 3 {
		t.Errorf("Packets = %v after %d pump calls, want 3 bytes up from 3 calls", r, calls.Load())
	}
}

// goroutinesIn counts the goroutines with fn on their stacks.
func goroutinesIn(fn string) int {
	return testenv.Goroutines(func(g string) bool { return strings.Contains(g, fn) })
}
