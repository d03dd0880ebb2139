//go:build !linux

package direct

import (
	"fmt"
	"runtime"
	"syscall"
)

func setSockopts(c syscall.RawConn, mark uint32, iface string) error {
	return fmt.Errorf("direct: socket marks and interface binding are not supported on %s; run without --fwmark/--out-interface", runtime.GOOS)
}
