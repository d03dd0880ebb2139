package memtrim

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ReleasePages hands the whole pages inside b[:cap(b)] back to the
// operating system and returns how many bytes that covered: they read as
// zeros afterwards, and take memory again only where they are written.
// For scratch buffers a goroutine keeps allocated between bursts (a
// device's batch buffers) whose contents no longer matter; the caller
// must be the only user of b[:cap(b)] while it runs. Only pages wholly
// inside b[:cap(b)] are released: a page b shares with other memory is
// left alone.
func ReleasePages(b []byte) int {
	if cap(b) == 0 {
		return 0
	}
	b = b[:cap(b)]
	page := uintptr(os.Getpagesize())
	addr := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	off := (page - addr%page) % page
	if off >= uintptr(len(b)) {
		return 0
	}
	n := (uintptr(len(b)) - off) / page * page
	if n == 0 {
		return 0
	}
	if err := unix.Madvise(b[off:off+n], unix.MADV_DONTNEED); err != nil {
		return 0
	}
	return int(n)
}
