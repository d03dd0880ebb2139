package testenv

import (
	"testing"
	"time"
)

// Patience bounds a test's wait for something that must happen (a
// handler's return, a flow's record, a datagram): generous, so that a
// loaded machine (CI runs every package at once on two cores, under
// -race) never fails a working test, yet a broken one fails with a
// message naming what did not come instead of hanging until go test's
// timeout kills the whole package.
const Patience = 30 * time.Second

// Recv receives from ch as a bare receive does (a closed channel gives
// the zero value), or fails t when nothing comes within Patience, naming
// what did not arrive. Call it from the test's own goroutine (it may call
// t.Fatalf).
func Recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	return recvWithin(t, ch, what, Patience)
}

func recvWithin[T any](t testing.TB, ch <-chan T, what string, d time.Duration) T {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("%s did not come within %v", what, d)
	}
	var zero T
	return zero
}
