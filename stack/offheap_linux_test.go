package stack

import (
	"runtime"
	"runtime/metrics"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/tun/tuntest"
)

// bigBatchDevice is a tuntest.Device with a batch of 128, as the Linux
// TUN device has.
type bigBatchDevice struct{ *tuntest.Device }

func (bigBatchDevice) BatchSize() int { return 128 }

// heapObjects is the Go heap's live objects in bytes after a collection.
func heapObjects() uint64 {
	runtime.GC()
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// TestLinkWriterBuffersOffHeap: the writer's batch buffers (64 KiB of
// capacity each, 8 MiB for a batch of 128) are not on the Go heap, where
// they would count as live heap and let that much more garbage pile up
// between collections; and the writer writes through them.
func TestLinkWriterBuffersOffHeap(t *testing.T) {
	dev, peer := tuntest.NewPipe(1500)
	defer peer.Close()
	before := heapObjects()
	e := newTestLink(bigBatchDevice{dev})
	e.start()
	defer e.Close()
	// Two packets at once are queued for writeLoop, which writes them
	// through its buffers.
	writePackets(t, e, outPacket(1, 100), outPacket(2, 100))
	for i := range 2 {
		if _, err := peer.Next(t.Context()); err != nil {
			t.Fatalf("packet %d: %v", i+1, err)
		}
	}
	// The peer may see the packets before the writer counts them.
	deadline := time.Now().Add(10 * time.Second)
	for e.pktsOut.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := e.pktsOut.Load(); n != 2 {
		t.Fatalf("the writer wrote %d packets, want 2", n)
	}
	after := heapObjects()
	grown := int64(after) - int64(before)
	t.Logf("live heap grew by %d KiB with the link running", grown>>10)
	if grown > 4<<20 {
		t.Errorf("the live heap grew by %d KiB with the link running: the writer's 8 MiB of buffers are on the Go heap", grown>>10)
	}
}
