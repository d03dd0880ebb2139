//go:build !linux

package wg

import (
	"fmt"
	"runtime"
)

// CheckFirewall reads nftables, which only Linux has.
func CheckFirewall(port uint16) ([]FirewallDrop, error) {
	return nil, fmt.Errorf("wg: firewall: %w: not checked on %s", ErrFirewallUnreadable, runtime.GOOS)
}
