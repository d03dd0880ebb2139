//go:build race

package relay

// raceEnabled: the race detector drops pooled items at random, so tests
// counting allocations do not apply.
const raceEnabled = true
