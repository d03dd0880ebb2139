//go:build !linux

package memtrim

// OffHeap returns an ordinary slice of n bytes outside Linux; free does
// nothing. See the Linux version.
func OffHeap(n int) (b []byte, free func()) {
	return make([]byte, n), func() {}
}
