//go:build !race

package stack

const raceOn = false
