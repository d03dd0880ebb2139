//go:build !unix

package socksclient

import "errors"

// readNonblock is not called here: no Poller watches (relay.NewPoller
// fails), so the watch is a goroutine.
func readNonblock(uintptr, []byte) (int, error) { return 0, errors.ErrUnsupported }

func isWouldBlock(error) bool { return false }
