//go:build race

package stack_test

// raceEnabled: the race detector enlarges every frame, so tests about
// stack depth do not apply.
const raceEnabled = true
