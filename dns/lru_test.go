package dns

import (
	"slices"
	"testing"
)

func TestLRUList(t *testing.T) {
	var l lruList[int]
	l.init()
	if l.oldest() != nil || len(slices.Collect(l.oldestFirst())) != 0 {
		t.Fatal("a new list is not empty")
	}
	nodes := make([]lruNode[int], 4)
	for i := range nodes {
		nodes[i].val = i
		l.toFront(&nodes[i])
	}
	check := func(want ...int) {
		t.Helper()
		if got := slices.Collect(l.oldestFirst()); !slices.Equal(got, want) {
			t.Fatalf("oldest first = %v, want %v", got, want)
		}
		if len(want) > 0 && l.oldest().val != want[0] {
			t.Fatalf("oldest = %d, want %d", l.oldest().val, want[0])
		}
	}
	check(0, 1, 2, 3)
	l.toFront(&nodes[0]) // linked: moves
	check(1, 2, 3, 0)
	l.toFront(&nodes[0]) // already first: stays
	check(1, 2, 3, 0)
	l.remove(&nodes[2])
	check(1, 3, 0)
	l.toFront(&nodes[2]) // unlinked again: re-added at the front
	check(1, 3, 0, 2)
	for range l.oldestFirst() {
		break // an early break must not panic
	}
	for _, i := range []int{1, 3, 0, 2} {
		l.remove(&nodes[i])
	}
	check()
	if l.oldest() != nil {
		t.Fatal("emptied list has an oldest node")
	}
}
