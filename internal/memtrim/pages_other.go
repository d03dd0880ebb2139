//go:build !linux

package memtrim

// ReleasePages does nothing outside Linux; see the Linux version.
func ReleasePages(b []byte) int { return 0 }
