package memtrim

import (
	"os"

	"golang.org/x/sys/unix"
)

// OffHeap returns n bytes of zeroed memory outside the Go heap, and the
// function that hands them back (after which b must not be used). On
// Linux they are an anonymous mapping of their own; where that fails, and
// on other systems, they are an ordinary slice and free does nothing.
//
// For large, long-lived scratch buffers that hold no Go pointers and of
// which a burst writes a little (a device's batch buffers, whose pages
// ReleasePages hands back between bursts): the collector neither scans
// them nor counts them in the live heap, from which it sets how much
// garbage may pile up before the next collection. On the Go heap, 8 MiB of
// mostly untouched buffers let a burst of new connections pile up 8 MiB
// more garbage between collections, and the heap the burst leaves behind
// (its last connections' objects spread over the spans that garbage took)
// stays larger.
func OffHeap(n int) (b []byte, free func()) {
	if n <= 0 {
		return nil, func() {}
	}
	page := os.Getpagesize()
	size := (n + page - 1) / page * page
	m, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return make([]byte, n), func() {}
	}
	return m[:n:n], func() { _ = unix.Munmap(m) }
}
