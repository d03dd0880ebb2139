//go:build !linux

package hostnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
)

func unsupported() error {
	return fmt.Errorf("routing the host through tunsocks (--auto-route, --gateway, cleanup) is only implemented on Linux, not %s: %w", runtime.GOOS, errors.ErrUnsupported)
}

// Host is an installed run (Linux only).
type Host struct{}

// Install is Linux-only.
func Install(context.Context, Config) (*Host, error) { return nil, unsupported() }

// State returns what was installed.
func (h *Host) State() *State { return nil }

// StatePath is the state file.
func (h *Host) StatePath() string { return "" }

// Close does nothing here.
func (h *Host) Close() error { return nil }

// Recover is Linux-only.
func Recover(Config) error { return unsupported() }

// Cleanup is Linux-only.
func Cleanup(string, string, *slog.Logger) ([]Cleaned, error) { return nil, unsupported() }

// Installed is Linux-only.
func Installed(string, string) (*State, error) { return nil, unsupported() }

// ExplainHere is Linux-only.
func ExplainHere(string, string, Flow) (Verdict, *State, error) { return Verdict{}, nil, unsupported() }
