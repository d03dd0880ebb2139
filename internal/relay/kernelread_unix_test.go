//go:build unix

package relay

import (
	"bytes"
	"context"
	"io"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

// waiterConn is a TCP socket the relay cannot splice on (its type hides
// *net.TCPConn) that waits for bytes without a buffer, as the netstack's
// connections do: a ReadWaiter.
type waiterConn struct{ tc *net.TCPConn }

func (w waiterConn) Read(p []byte) (int, error)         { return w.tc.Read(p) }
func (w waiterConn) Write(p []byte) (int, error)        { return w.tc.Write(p) }
func (w waiterConn) Close() error                       { return w.tc.Close() }
func (w waiterConn) CloseWrite() error                  { return w.tc.CloseWrite() }
func (w waiterConn) LocalAddr() net.Addr                { return w.tc.LocalAddr() }
func (w waiterConn) RemoteAddr() net.Addr               { return w.tc.RemoteAddr() }
func (w waiterConn) SetDeadline(t time.Time) error      { return w.tc.SetDeadline(t) }
func (w waiterConn) SetReadDeadline(t time.Time) error  { return w.tc.SetReadDeadline(t) }
func (w waiterConn) SetWriteDeadline(t time.Time) error { return w.tc.SetWriteDeadline(t) }

func (w waiterConn) WaitRead() error {
	rc, err := w.tc.SyscallConn()
	if err != nil {
		return err
	}
	var one [1]byte
	return rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), one[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return err != syscall.EAGAIN
	})
}

// TestStreamIdleHoldsNoBuffers: relays that moved a byte each way and went
// idle hold no copy buffer, neither the direction reading a kernel socket
// nor the one reading a ReadWaiter. Before, each held two 32 KiB buffers
// for its whole life (6.4 MB for these 100; the bound is a quarter of it).
func TestStreamIdleHoldsNoBuffers(t *testing.T) {
	const n = 100
	type relayEnds struct{ app, remote *net.TCPConn }
	ends := make([]relayEnds, n)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, n)
	defer func() {
		cancel()
		for range n {
			testenv.Recv(t, done, "a relay's return")
		}
	}()
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := range ends {
		app, a := testenv.TCPPair(t)
		b, remote := testenv.TCPPair(t)
		go func() {
			Stream(ctx, a, waiterConn{b}, StreamOptions{Idle: time.Minute})
			done <- struct{}{}
		}()
		ends[i] = relayEnds{app, remote}
		// One byte each way, so both directions have read and written.
		for _, dir := range [][2]*net.TCPConn{{app, remote}, {remote, app}} {
			if _, err := dir[0].Write([]byte{byte(i)}); err != nil {
				t.Fatal(err)
			}
			dir[1].SetReadDeadline(time.Now().Add(10 * time.Second))
			var got [1]byte
			if _, err := io.ReadFull(dir[1], got[:]); err != nil || got[0] != byte(i) {
				t.Fatalf("relay %d: got %v, %v", i, got, err)
			}
		}
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	grown := int64(after.HeapInuse) - int64(before.HeapInuse)
	if limit := int64(n * bufSize / 2); grown > limit {
		t.Errorf("heap grew by %d bytes for %d idle relays, want under %d: idle relays hold copy buffers", grown, n, limit)
	}
	// And they still relay, both ways, in full buffers' worth too.
	msg := make([]byte, 3*bufSize)
	for i, e := range ends[:3] {
		for _, dir := range [][2]*net.TCPConn{{e.app, e.remote}, {e.remote, e.app}} {
			go dir[0].Write(msg)
			dir[1].SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(dir[1], make([]byte, len(msg))); err != nil {
				t.Fatalf("relay %d after idling: %v", i, err)
			}
		}
	}
}

// writeKernel writes everything, in order, also when the socket's send
// buffer fills and it has to wait on the poller (the reader is slow), and
// fails with an error once the socket is closed.
func TestWriteKernelWaitsForRoomAndKeepsOrder(t *testing.T) {
	c, s := testenv.TCPPair(t)
	c.SetWriteBuffer(16 << 10)
	k := kernelConnOf(c)
	if k == nil {
		t.Fatal("kernelConnOf(*net.TCPConn) = nil")
	}
	msg := make([]byte, 4<<20) // far more than both socket buffers hold
	for i := range msg {
		msg[i] = byte(i * 7)
	}
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(s)
		got <- b
	}()
	n, err := writeKernel(k.tc, k.rc, msg)
	if n != len(msg) || err != nil {
		t.Fatalf("writeKernel = %d, %v; want %d, nil", n, err, len(msg))
	}
	c.CloseWrite()
	select {
	case b := <-got:
		if string(b) != string(msg) {
			t.Fatalf("the reader got %d bytes, not the %d written in order", len(b), len(msg))
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the reader never saw the end")
	}
	c.Close()
	if _, err := writeKernel(k.tc, k.rc, []byte("x")); err == nil || !isOrdinary(err) {
		t.Errorf("writeKernel on a closed socket = %v, want an error wrapping net.ErrClosed", err)
	}
}

// segSource is a DirectReader as the netstack's connections are: it holds
// what is to be read as segments, hands them to ReadTo's writer one by
// one and consumes only what the writer took. It counts the writes that
// took less than offered.
type segSource struct {
	segs  [][]byte
	eof   bool
	short int
}

func (s *segSource) ReadTo(w io.Writer) (int, error) {
	total := 0
	for len(s.segs) > 0 {
		seg := s.segs[0]
		n, err := w.Write(seg)
		total += n
		if n < len(seg) {
			s.short++
			s.segs[0] = seg[n:]
		} else {
			s.segs = s.segs[1:]
		}
		if err != nil {
			return total, err
		}
	}
	if total == 0 && s.eof {
		return 0, io.EOF
	}
	return total, nil
}

// readToKernel moves every byte once and in order when the socket's send
// buffer keeps filling (a tiny SO_SNDBUF and a slow reader): each short
// write leaves the rest with the source, and readToKernel waits for room
// and goes on; then it reports the source's end, and fails once the
// socket is closed.
func TestReadToKernelPartialWritesKeepEveryByte(t *testing.T) {
	c, s := testenv.TCPPair(t)
	c.SetWriteBuffer(4 << 10)
	k := kernelConnOf(c)
	if k == nil {
		t.Fatal("kernelConnOf(*net.TCPConn) = nil")
	}
	msg := make([]byte, 2<<20)
	for i := range msg {
		msg[i] = byte(i*7 + i>>11)
	}
	src := &segSource{eof: true}
	for rest, size := msg, 1; len(rest) > 0; size = size*5%(64<<10) + 1 {
		n := min(size, len(rest))
		src.segs = append(src.segs, rest[:n])
		rest = rest[n:]
	}
	got := make(chan []byte, 1)
	go func() {
		// A slow reader: small reads, with pauses, so the sender
		// keeps meeting a full buffer.
		var b []byte
		buf := make([]byte, 1500)
		for i := 0; ; i++ {
			n, err := s.Read(buf)
			b = append(b, buf[:n]...)
			if err != nil {
				break
			}
			if i%64 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		got <- b
	}()
	var w kernelWriter
	moved := 0
	for calls := 0; ; calls++ {
		if calls > len(msg) {
			t.Fatal("readToKernel does not come to the end")
		}
		n, err := readToKernel(src, k, &w)
		moved += n
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("readToKernel after %d bytes: %v", moved, err)
		}
	}
	if moved != len(msg) {
		t.Errorf("readToKernel reported %d bytes moved, want %d", moved, len(msg))
	}
	c.CloseWrite()
	select {
	case b := <-got:
		if !bytes.Equal(b, msg) {
			t.Fatalf("the reader got %d bytes, not the %d sent once each and in order", len(b), len(msg))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the reader never saw the end")
	}
	if src.short == 0 {
		t.Error("no write was ever short: the test did not fill the send buffer")
	}
	t.Logf("%d short writes", src.short)
	c.Close()
	src.segs, src.eof = [][]byte{[]byte("x")}, false
	if n, err := readToKernel(src, k, &w); n != 0 || err == nil || !isOrdinary(err) {
		t.Errorf("readToKernel to a closed socket = %d, %v; want 0 and an error wrapping net.ErrClosed", n, err)
	}
	if len(src.segs) != 1 {
		t.Error("the source lost its byte to a closed socket")
	}
}

// A round trip's small reads and writes on the upstream socket allocate
// nothing: kernelReader's and readToKernel's callbacks for the RawConn
// are made once (a closure per call escaped and cost three allocations).
func TestKernelSmallReadsAndWritesAllocateNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector drops pooled items at random")
	}
	c, s := testenv.TCPPair(t)
	k := kernelConnOf(c)
	if k == nil {
		t.Fatal("kernelConnOf(*net.TCPConn) = nil")
	}
	get := func(bp **[]byte) {
		if *bp == nil {
			*bp = bufPool.Get().(*[]byte)
		}
	}
	r := newKernelReader(k.tc, k.rc, get)
	var w kernelWriter
	src := &segSource{}
	one := []byte("x")
	segs := [][]byte{one}
	peer := make([]byte, 1)
	var bp *[]byte
	trip := func() {
		// Out through readToKernel, echoed by the peer, in with r.
		src.segs = segs[:1]
		if n, err := readToKernel(src, k, &w); n != 1 || err != nil {
			t.Fatalf("readToKernel = %d, %v; want 1, nil", n, err)
		}
		if _, err := io.ReadFull(s, peer); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Write(peer); err != nil {
			t.Fatal(err)
		}
		if n, err := r.read(&bp); n != 1 || err != nil || (*bp)[0] != 'x' {
			t.Fatalf("read = %d, %v; want 1 byte x", n, err)
		}
		bufPool.Put(bp)
		bp = nil
	}
	trip()
	// The peer's side (a *net.TCPConn) allocates nothing either.
	if a := testing.AllocsPerRun(100, trip); a != 0 {
		t.Errorf("%.1f allocations per round trip, want 0", a)
	}
}

// The upstream reader of a request/response exchange reads the socket
// once per reply: with a sink (as polledHalf forwards a short read), the
// wait goes on after each reply without a read that finds nothing. The
// control, a loop that returns each read and reads again (polledHalf
// before), makes one such read per reply.
func TestKernelReaderSinkSkipsEmptyReads(t *testing.T) {
	const replies = 50
	for _, withSink := range []bool{true, false} {
		c, s := testenv.TCPPair(t)
		k := kernelConnOf(c)
		if k == nil {
			t.Fatal("kernelConnOf(*net.TCPConn) = nil")
		}
		var bp *[]byte
		get := func(bp **[]byte) {
			if *bp == nil {
				*bp = getBuf(false)
			}
		}
		r := newKernelReader(k.tc, k.rc, get)
		got := make(chan byte, 1)
		take := func(n int) {
			got <- (*bp)[n-1]
			putBuf(bp)
			bp = nil
		}
		if withSink {
			r.sink = func(n int) error { take(n); return nil }
		}
		done := make(chan error, 1)
		go func() {
			for {
				n, err := r.read(&bp)
				if err != nil || n == 0 {
					done <- err
					return
				}
				take(n)
			}
		}()
		for i := range replies {
			if _, err := s.Write([]byte{byte(i)}); err != nil {
				t.Fatal(err)
			}
			select {
			case b := <-got:
				if b != byte(i) {
					t.Fatalf("got %d, want %d", b, i)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("reply %d not read", i)
			}
		}
		s.Close()
		if err := testenv.Recv(t, done, "the reader's end"); err != io.EOF {
			t.Errorf("read ended with %v, want io.EOF", err)
		}
		switch {
		case withSink && r.empty > replies/10:
			t.Errorf("with a sink: %d reads found nothing over %d replies, want at most %d", r.empty, replies, replies/10)
		case !withSink && r.empty < replies/2:
			t.Errorf("control: %d reads found nothing over %d replies, want about one per reply", r.empty, replies)
		}
		t.Logf("sink %v: %d reads found nothing over %d replies", withSink, r.empty, replies)
	}
}
