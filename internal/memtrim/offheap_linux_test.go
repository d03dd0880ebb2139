package memtrim

import (
	"runtime"
	"runtime/metrics"
	"testing"
)

// liveHeap is the Go heap's live objects in bytes after a collection.
func liveHeap() uint64 {
	runtime.GC()
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// TestOffHeap: 8 MiB from OffHeap are not on the Go heap, hold what is
// written, and leave the resident set when freed.
func TestOffHeap(t *testing.T) {
	if b, free := OffHeap(0); b != nil {
		free()
		t.Fatalf("OffHeap(0) = %d bytes, want nil", len(b))
	}
	const n = 8 << 20
	before := liveHeap()
	b, free := OffHeap(n)
	if len(b) != n || cap(b) != n {
		t.Fatalf("OffHeap(%d): len %d cap %d", n, len(b), cap(b))
	}
	for i := range b {
		if b[i] != 0 {
			t.Fatalf("byte %d of fresh memory is %d, want 0", i, b[i])
		}
		b[i] = byte(i)
	}
	if grown := int64(liveHeap()) - int64(before); grown > 1<<20 {
		t.Errorf("the live heap grew by %d KiB with 8 MiB from OffHeap held", grown>>10)
	}
	for _, i := range []int{0, n / 2, n - 1} {
		if b[i] != byte(i) {
			t.Fatalf("byte %d reads %d, want %d", i, b[i], byte(i))
		}
	}
	written := rssAnon(t)
	runtime.KeepAlive(b)
	free()
	if after := rssAnon(t); written-after < 7<<10 {
		t.Errorf("RssAnon %d kB -> %d kB after free: want about 8 MiB less", written, after)
	}
}
