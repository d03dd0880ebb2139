package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

// openFDs counts the descriptors of this process.
func openFDs(tb testing.TB) int {
	tb.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		tb.Fatal(err)
	}
	return len(ents)
}

// idleRelays starts n relays between loopback TCP pairs, moves one byte
// each way through every one (so both directions have spliced), and
// returns the descriptors the relays hold once they all wait for more:
// the process's count minus the test's own ends (two per relay). stop ends
// them.
func idleRelays(tb testing.TB, n int) (held int, stop func()) {
	tb.Helper()
	base := openFDs(tb)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	ends := make([]*net.TCPConn, 0, 2*n)
	for range n {
		app, a := testenv.TCPPair(tb)
		b, remote := testenv.TCPPair(tb)
		ends = append(ends, app, remote)
		wg.Add(1)
		go func() {
			defer wg.Done()
			Stream(ctx, a, b, StreamOptions{})
		}()
		one := make([]byte, 1)
		if _, err := app.Write([]byte("u")); err != nil {
			tb.Fatal(err)
		}
		if _, err := io.ReadFull(remote, one); err != nil {
			tb.Fatal(err)
		}
		if _, err := remote.Write([]byte("d")); err != nil {
			tb.Fatal(err)
		}
		if _, err := io.ReadFull(app, one); err != nil {
			tb.Fatal(err)
		}
	}
	// Every byte has arrived, so each direction is back waiting on its
	// source (or about to be: a direction gives its pipe back before it
	// waits, and the count only goes down while it does).
	held = openFDs(tb) - base - len(ends)
	return held, func() {
		cancel()
		wg.Wait()
		for _, c := range ends {
			c.Close()
		}
	}
}

// BenchmarkIdleRelayDescriptors reports the descriptors one idle TCP relay
// holds (fds/relay): its two sockets, plus a share of the few spare splice
// pipes the process keeps. Run:
//
//	go test -run '^$' -bench IdleRelayDescriptors -benchtime 1x ./internal/relay
func BenchmarkIdleRelayDescriptors(b *testing.B) {
	const relays = 500
	var perRelay float64
	for range b.N {
		held, stop := idleRelays(b, relays)
		perRelay += float64(held) / relays
		stop()
	}
	b.ReportMetric(perRelay/float64(b.N), "fds/relay")
	b.ReportMetric(0, "ns/op")
}

func TestIdleRelayHoldsNoPipe(t *testing.T) {
	// 100 idle relays hold their 200 sockets and at most the spare pipes
	// the process keeps; with a pipe held per idle direction it was 600.
	const relays = 100
	held, stop := idleRelays(t, relays)
	defer stop()
	if held > 2*relays+2*maxSparePipes {
		t.Errorf("%d idle relays hold %d descriptors, want at most %d (two sockets each and %d spare pipes)", relays, held, 2*relays+2*maxSparePipes, maxSparePipes)
	}
}

func TestSpliceBackpressureAndNoPipeLeak(t *testing.T) {
	// The remote reads nothing until the relay's buffers are full, so the
	// splice into it waits with bytes in its pipe; then the remote resets
	// one relay mid-stream (bytes left in a pipe) and drains another. No
	// byte is lost or reordered, and once the relays end no pipe is left
	// open beyond the spare ones.
	base := openFDs(t)
	data := make([]byte, 8<<20)
	rand.Read(data)
	run := func(reset bool) {
		app, a := testenv.TCPPair(t)
		b, remote := testenv.TCPPair(t)
		defer app.Close()
		defer remote.Close()
		done := make(chan error, 1)
		go func() { _, _, err := Stream(context.Background(), a, b, StreamOptions{}); done <- err }()
		go func() { app.Write(data); app.CloseWrite() }()
		time.Sleep(100 * time.Millisecond) // let the buffers fill
		if reset {
			remote.SetLinger(0)
			remote.Close()
			app.Close()
		} else {
			got, err := io.ReadAll(remote)
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("remote read %d of %d bytes intact=%v: %v", len(got), len(data), bytes.Equal(got, data), err)
			}
			remote.CloseWrite()
		}
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("relay did not end")
		}
	}
	run(false)
	run(true)
	if n := openFDs(t) - base; n > 2*maxSparePipes {
		t.Errorf("%d descriptors more than before two ended relays, want at most the %d of the spare pipes", n, 2*maxSparePipes)
	}
}
