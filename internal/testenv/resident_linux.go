package testenv

import (
	"os"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ResidentPages counts the pages wholly inside the memory [lo, hi) that
// are resident (mincore); a test of memory handed back to the system
// checks it falls to zero. It fails the test when no whole page is inside.
func ResidentPages(t testing.TB, lo, hi uintptr) int {
	t.Helper()
	page := uintptr(os.Getpagesize())
	lo = (lo + page - 1) / page * page
	hi = hi / page * page
	if hi <= lo {
		t.Fatalf("no whole page between %#x and %#x", lo, hi)
	}
	vec := make([]byte, (hi-lo)/page)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, lo, hi-lo, uintptr(unsafe.Pointer(unsafe.SliceData(vec)))); e != 0 {
		t.Fatalf("mincore: %v", e)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

// ResidentPagesOf is ResidentPages of b[:cap(b)].
func ResidentPagesOf(t testing.TB, b []byte) int {
	t.Helper()
	lo := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	return ResidentPages(t, lo, lo+uintptr(cap(b)))
}
