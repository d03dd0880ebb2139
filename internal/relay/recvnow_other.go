//go:build !linux

package relay

import (
	"errors"
	"net/netip"
	"syscall"
)

// RecvNow reads one waiting datagram without waiting on Linux; here it
// fails (PacketsAsync does not run here: it needs the Poller).
func RecvNow(syscall.RawConn, []byte) (int, netip.AddrPort, bool, error) {
	return 0, netip.AddrPort{}, false, errors.ErrUnsupported
}
