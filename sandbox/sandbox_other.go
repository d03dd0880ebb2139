//go:build !linux

package sandbox

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"syscall"
)

func unsupported() error { return fmt.Errorf("%w (running on %s)", ErrUnsupported, runtime.GOOS) }

// Sandbox is Linux-only.
type Sandbox struct{}

// Start is Linux-only.
func Start(ctx context.Context, spec Spec) (*Sandbox, error) { return nil, unsupported() }

// RunInit is Linux-only.
func RunInit() int { return 111 }

// Probe is Linux-only.
func Probe(env ProbeEnv) error { return unsupported() }

// TakeTUN is Linux-only.
func (s *Sandbox) TakeTUN() int { return -1 }

// TakeSockDiag is Linux-only.
func (s *Sandbox) TakeSockDiag() *os.File { return nil }

// TunName is Linux-only.
func (s *Sandbox) TunName() string { return "" }

// Notes is Linux-only.
func (s *Sandbox) Notes() []string { return nil }

// Pid is Linux-only.
func (s *Sandbox) Pid() int { return 0 }

// Run is Linux-only.
func (s *Sandbox) Run() error { return unsupported() }

// Signal is Linux-only.
func (s *Sandbox) Signal(sig syscall.Signal) error { return unsupported() }

// Forward is Linux-only.
func (s *Sandbox) Forward(sig syscall.Signal) error { return unsupported() }

// Done is Linux-only.
func (s *Sandbox) Done() <-chan struct{} { return nil }

// Wait is Linux-only.
func (s *Sandbox) Wait() (Exit, error) { return Exit{}, unsupported() }

// Kill is Linux-only.
func (s *Sandbox) Kill() {}

// Close is Linux-only.
func (s *Sandbox) Close() error { return nil }

// Publish is Linux-only.
func (s *Sandbox) Publish(dir, name string) (string, error) { return "", unsupported() }

// CheckFree is Linux-only.
func CheckFree(dir, name string) error { return unsupported() }

// LookPath is Linux-only.
func LookPath(file string, env []string) (string, error) { return "", unsupported() }

// Joined is Linux-only.
type Joined struct{}

// Join is Linux-only.
func Join(ctx context.Context, socket string, js JoinSpec) (*Joined, error) {
	return nil, unsupported()
}

// Signal is Linux-only.
func (j *Joined) Signal(sig syscall.Signal) error { return unsupported() }

// Wait is Linux-only.
func (j *Joined) Wait() (Exit, error) { return Exit{}, unsupported() }

// Close is Linux-only.
func (j *Joined) Close() error { return nil }
