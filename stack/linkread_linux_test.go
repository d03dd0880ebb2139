package stack

import (
	"bytes"
	"log/slog"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/tun/tuntest"
)

// bufRecorder is a tuntest.Device that remembers the buffers the link's
// reader hands it.
type bufRecorder struct {
	*tuntest.Device
	mu   sync.Mutex
	bufs [][]byte
}

func (d *bufRecorder) record(bufs [][]byte) {
	d.mu.Lock()
	if d.bufs == nil {
		d.bufs = append([][]byte(nil), bufs...)
	}
	d.mu.Unlock()
}

func (d *bufRecorder) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	d.record(bufs)
	return d.Device.Read(bufs, sizes, offset)
}

func (d *bufRecorder) ReadValidated(bufs [][]byte, sizes []int, valid []bool, offset int) (int, error) {
	d.record(bufs)
	return d.Device.ReadValidated(bufs, sizes, valid, offset)
}

// residentPages counts the pages wholly inside the memory from the first
// byte of first to the last of last that are resident (mincore).
func residentPages(t *testing.T, first, last []byte) int {
	t.Helper()
	lo := uintptr(unsafe.Pointer(unsafe.SliceData(first)))
	hi := uintptr(unsafe.Pointer(unsafe.SliceData(last))) + uintptr(cap(last))
	return testenv.ResidentPages(t, lo, hi)
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestReaderReleasesBuffersWhenIdle: after a burst the device reader is
// idle in Read with its batch buffers written. releaseBuffers (a trim)
// interrupts that Read, and the reader hands the buffers' pages back: none
// of them is resident afterwards. Packets read later still arrive, and
// none was lost to the interrupt.
func TestReaderReleasesBuffersWhenIdle(t *testing.T) {
	dev, peer := tuntest.NewPipe(1500)
	rd := &bufRecorder{Device: dev}
	e := newLinkEndpoint(linkConfig{dev: rd, mtu: 1500, readBufSize: 1500, queueLen: 64, log: slog.New(slog.DiscardHandler)})
	e.start()
	t.Cleanup(func() {
		e.Close()
		dev.Close()
		e.Wait()
	})
	// Not IP (version 10): read, then dropped before gVisor.
	junk := bytes.Repeat([]byte{0xa5}, 1500)
	burst := func(want uint64) {
		t.Helper()
		for range tuntest.BatchSize {
			if err := peer.Inject(junk); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, "the reader to take the packets", func() bool { return e.rxDrops.Load() == want })
	}
	burst(tuntest.BatchSize)
	rd.mu.Lock()
	bufs := rd.bufs
	rd.mu.Unlock()
	if len(bufs) != tuntest.BatchSize {
		t.Fatalf("reader passed %d buffers, want %d", len(bufs), tuntest.BatchSize)
	}
	first, last := bufs[0], bufs[len(bufs)-1]
	if n := residentPages(t, first, last); n == 0 {
		t.Fatal("no page of the reader's buffers is resident after a burst: the test sees nothing")
	}
	if e.readReleased.Load() != 0 {
		t.Fatal("the reader released its buffers before anyone asked")
	}

	e.releaseBuffers()
	waitFor(t, "the reader to release its buffers", func() bool { return e.readReleased.Load() > 0 })
	if n := residentPages(t, first, last); n != 0 {
		t.Errorf("%d pages of the reader's buffers still resident after the release", n)
	}
	if got := dev.Interrupts(); got != 1 {
		t.Errorf("%d reads interrupted, want 1", got)
	}
	if n := e.rxErrors.Load(); n != 0 {
		t.Errorf("the interrupted read counted as %d read errors", n)
	}

	// The same buffers serve the next burst.
	burst(2 * tuntest.BatchSize)
	if n := residentPages(t, first, last); n == 0 {
		t.Error("no page resident after reading again: were the buffers replaced?")
	}
}
