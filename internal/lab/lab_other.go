//go:build !linux

package lab

import (
	"fmt"
	"net/netip"
	"runtime"
	"time"
)

// SetResolvConf is Linux-only.
func (l *Lab) SetResolvConf(string, ...netip.Addr) error { return nil }

// New is Linux-only.
func New(Options) (*Lab, error) {
	return nil, fmt.Errorf("lab: network namespaces are Linux-only (running on %s)", runtime.GOOS)
}

// RouteDefaultVia is Linux-only.
func (l *Lab) RouteDefaultVia(string, time.Duration) error { return nil }

// EnableDirect is Linux-only.
func (l *Lab) EnableDirect(uint32) error { return nil }

// Do is Linux-only.
func (l *Lab) Do(string, func() error) error { return nil }

// Close is Linux-only.
func (l *Lab) Close() error { return nil }

// CleanupStale is Linux-only.
func CleanupStale() ([]string, error) { return nil, nil }

// Link is Linux-only.
func (l *Lab) Link(string, string, netip.Prefix, netip.Prefix, string, string, netip.Prefix, netip.Prefix, int) error {
	return nil
}
