//go:build !linux

package tun

import (
	"context"
	"fmt"
	"os"
	"runtime"
)

// Open is only implemented on Linux; elsewhere it returns ErrUnsupported.
func Open(ctx context.Context, cfg Config) (*Device, error) {
	return nil, fmt.Errorf("%w (%s): configuring a TUN device is implemented for linux only", ErrUnsupported, runtime.GOOS)
}

// CreateFD is only implemented on Linux; elsewhere it returns ErrUnsupported.
func CreateFD(ctx context.Context, cfg Config) (*os.File, string, error) {
	return nil, "", fmt.Errorf("%w (%s): creating a TUN device is implemented for linux only", ErrUnsupported, runtime.GOOS)
}

// ReadWaits implements stack.WaitCountingDevice; the count is kept on
// Linux only.
func (d *Device) ReadWaits() (n uint64, ok bool) { return 0, false }
