package relay

import (
	"sync"
	"syscall"
)

// pollSlot is a parked direction's registration on a Poller: the socket
// it waits on, the notification, and the registration's id while it is
// parked. Both parking relays (the stream relay's polledHalf, the packet
// relay's parkedDown) keep one.
type pollSlot struct {
	rc     syscall.RawConn
	poller *Poller
	wakeFn func(uint64) // the direction's wake, made once

	mu     sync.Mutex
	parkID uint64 // the Poller registration while parked, 0 otherwise
}

// registerLocked registers the slot on its Poller, with mu held by the
// caller (who has checked that the direction may park): a wake that runs
// before wait returns waits for mu, and so sees parkID set. False when
// the Poller will not take it (closed, or the socket is).
func (s *pollSlot) registerLocked() bool {
	id, err := s.poller.wait(s.rc, s.wakeFn)
	if err != nil {
		return false
	}
	s.parkID = id
	return true
}

// claim is a notification's check: true when id is the slot's current
// registration, which it ends; the caller then runs the direction.
func (s *pollSlot) claim(id uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id == 0 || s.parkID != id {
		return false
	}
	s.parkID = 0
	return true
}

// cancel ends the slot's registration, if it has one (true): the caller
// then runs the direction, which meets its closed socket and ends.
func (s *pollSlot) cancel() bool {
	s.mu.Lock()
	id := s.parkID
	s.parkID = 0
	s.mu.Unlock()
	if id == 0 {
		return false
	}
	s.poller.cancel(s.rc, id)
	return true
}
