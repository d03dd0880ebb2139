package lru

import (
	"slices"
	"testing"
)

func TestList(t *testing.T) {
	var l List[int]
	l.Init()
	if l.Oldest() != nil || len(slices.Collect(l.OldestFirst())) != 0 {
		t.Fatal("a new list is not empty")
	}
	nodes := make([]Node[int], 4)
	for i := range nodes {
		nodes[i].Val = i
		l.ToFront(&nodes[i])
	}
	check := func(want ...int) {
		t.Helper()
		if got := slices.Collect(l.OldestFirst()); !slices.Equal(got, want) {
			t.Fatalf("oldest first = %v, want %v", got, want)
		}
		if len(want) > 0 && l.Oldest().Val != want[0] {
			t.Fatalf("oldest = %d, want %d", l.Oldest().Val, want[0])
		}
	}
	check(0, 1, 2, 3)
	l.ToFront(&nodes[0]) // linked: moves
	check(1, 2, 3, 0)
	l.ToFront(&nodes[0]) // already first: stays
	check(1, 2, 3, 0)
	l.Remove(&nodes[2])
	check(1, 3, 0)
	l.ToFront(&nodes[2]) // unlinked again: re-added at the front
	check(1, 3, 0, 2)
	for range l.OldestFirst() {
		break // an early break must not panic
	}
	for _, i := range []int{1, 3, 0, 2} {
		l.Remove(&nodes[i])
	}
	check()
	if l.Oldest() != nil {
		t.Fatal("emptied list has an oldest node")
	}
}
