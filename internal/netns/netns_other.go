//go:build !linux

// Package netns runs code inside named Linux network namespaces; on other
// systems every call reports that namespaces are Linux-only.
package netns

import (
	"fmt"
	"runtime"
)

var errUnsupported = fmt.Errorf("network namespaces are Linux-only (running on %s)", runtime.GOOS)

// Do is Linux-only.
func Do(name string, fn func() error) error { return errUnsupported }

// Create is Linux-only.
func Create(name string) error { return errUnsupported }

// Delete is Linux-only.
func Delete(name string) error { return errUnsupported }

// Exists is Linux-only.
func Exists(name string) bool { return false }

// List is Linux-only.
func List() ([]string, error) { return nil, errUnsupported }
