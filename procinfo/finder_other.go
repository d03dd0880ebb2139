//go:build !linux

package procinfo

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"time"
)

type sysFinder struct{}

func newSysFinder() *sysFinder { return &sysFinder{} }

// NewFinderIn is NewFinder for another network namespace's sockets; process
// lookup is Linux-only, so it closes diag and returns a Finder whose
// lookups fail with errors.ErrUnsupported.
func NewFinderIn(ttl time.Duration, diag *os.File) *Finder {
	if diag != nil {
		diag.Close()
	}
	return NewFinder(ttl)
}

func (*sysFinder) close() error { return nil }

func (s *sysFinder) owner(network string, addr netip.AddrPort) (Owner, error) {
	return s.find(network, addr, netip.AddrPort{})
}

func (*sysFinder) find(string, netip.AddrPort, netip.AddrPort) (Owner, error) {
	return Owner{PID: -1, UID: -1}, fmt.Errorf("process lookup is not supported on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}
