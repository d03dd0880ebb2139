//go:build !linux

package relay

import (
	"errors"
	"net"
)

// splicer is the splice path, on Linux only; elsewhere every direction
// copies through a pooled buffer.
type splicer struct{}

func newSplicer(dst, src *net.TCPConn) *splicer { return nil }

var errNoSplice = errors.New("relay: splice not supported")

func (*splicer) move() (int64, bool, error) { return 0, false, errNoSplice }

func (*splicer) close() {}
