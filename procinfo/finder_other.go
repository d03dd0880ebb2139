//go:build !linux

package procinfo

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
)

type sysFinder struct{}

func newSysFinder() *sysFinder { return &sysFinder{} }

func (*sysFinder) lookup(string, netip.AddrPort, netip.AddrPort) (string, int, error) {
	return "", -1, fmt.Errorf("process lookup is not supported on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}

func (*sysFinder) owner(string, netip.AddrPort) (Owner, error) {
	return Owner{PID: -1, UID: -1}, fmt.Errorf("process lookup is not supported on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}
