package stack

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip"
)

var (
	errStackClosed     = fmt.Errorf("stack: closed: %w", net.ErrClosed)
	errAlreadyDecided  = errors.New("stack: TCP request already accepted or rejected")
	errFamilyMismatch  = errors.New("stack: address family of source and destination differ")
	errInvalidAddrPort = errors.New("stack: invalid address:port")
	// errShed: the attempt was given up to make room for newer ones
	// (TCPOptions.MaxInFlight, MaxInFlightPerSource).
	errShed = fmt.Errorf("stack: connection attempt shed, too many handshakes in flight: %w", syscall.ECONNABORTED)
	// errHandshakeTimeout: the app did not complete its handshake within
	// TCPOptions.HandshakeTimeout.
	errHandshakeTimeout = fmt.Errorf("stack: the app did not complete its handshake in time: %w", syscall.ETIMEDOUT)
	// errHandshakeAborted: system TCP's wait for the kernel's accept was
	// aborted (for errShed or errHandshakeTimeout).
	errHandshakeAborted = errors.New("stack: handshake aborted")
	// errEvicted: a UDP flow was closed to make room for a new one
	// (Config.MaxUDPFlows, MaxUDPFlowsPerSource).
	errEvicted = fmt.Errorf("stack: udp flow evicted for a newer one: %w", net.ErrClosed)
)

// convertError turns a tcpip.Error into an error that keeps the meaning
// callers branch on: the matching syscall errno (so errors.Is(err,
// syscall.ECONNREFUSED) works, and the SOCKS server can map causes to reply
// codes), net.ErrClosed for closed endpoints, os.ErrDeadlineExceeded for
// timeouts. The message keeps gVisor's text.
func convertError(e tcpip.Error) error {
	if e == nil {
		return nil
	}
	var cause error
	switch e.(type) {
	case *tcpip.ErrConnectionRefused:
		cause = syscall.ECONNREFUSED
	case *tcpip.ErrConnectionReset:
		cause = syscall.ECONNRESET
	case *tcpip.ErrConnectionAborted:
		cause = syscall.ECONNABORTED
	case *tcpip.ErrTimeout:
		cause = syscall.ETIMEDOUT
	case *tcpip.ErrHostUnreachable, *tcpip.ErrHostDown:
		cause = syscall.EHOSTUNREACH
	case *tcpip.ErrNetworkUnreachable, *tcpip.ErrNoNet:
		cause = syscall.ENETUNREACH
	case *tcpip.ErrMessageTooLong:
		cause = syscall.EMSGSIZE
	case *tcpip.ErrNoBufferSpace:
		cause = syscall.ENOBUFS
	case *tcpip.ErrBadAddress, *tcpip.ErrBadLocalAddress:
		cause = syscall.EADDRNOTAVAIL
	case *tcpip.ErrClosedForSend, *tcpip.ErrClosedForReceive, *tcpip.ErrInvalidEndpointState, *tcpip.ErrNotConnected:
		cause = net.ErrClosed
	case *tcpip.ErrWouldBlock:
		cause = syscall.EAGAIN
	default:
		return errors.New(e.String())
	}
	return fmt.Errorf("%s: %w", e.String(), cause)
}
