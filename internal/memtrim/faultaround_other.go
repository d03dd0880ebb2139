//go:build !linux || android || !(amd64 || arm64 || 386 || arm || riscv64 || loong64 || s390x)

package memtrim

import (
	"errors"
	"io"
)

// NoFaultAround is Linux-only (and not on Android, whose app sandbox may
// kill a process for calling userfaultfd); see the Linux version.
func NoFaultAround() (io.Closer, error) {
	return nil, errors.New("memtrim: no fault-around control on this system")
}
