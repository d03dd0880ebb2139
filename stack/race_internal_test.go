//go:build race

package stack

// raceOn: the race detector drops pooled items at random, so tests that
// count allocations do not apply.
const raceOn = true
