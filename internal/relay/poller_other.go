//go:build !linux

package relay

import (
	"errors"
	"syscall"
)

// Poller wakes relay directions waiting for a kernel socket to become
// readable without a goroutine each; Linux only (epoll). Elsewhere
// NewPoller fails and Streams read on a goroutine as without one.
type Poller struct{}

// NewPoller fails on this system.
func NewPoller() (*Poller, error) { return nil, errors.New("relay: poller: needs Linux") }

// runNotified never runs h here: there is no Poller.
func (p *Poller) runNotified(*notifiedHalf) bool { return false }

// Close does nothing.
func (p *Poller) Close() error { return nil }

var errPollerClosed = errors.New("relay: poller closed")

func (p *Poller) wait(syscall.RawConn, func(uint64)) (uint64, error) { return 0, errPollerClosed }

func (p *Poller) cancel(syscall.RawConn, uint64) {}

// Watch fails on this system.
func (p *Poller) Watch(syscall.RawConn, func()) (func(), error) { return nil, errPollerClosed }
