package testenv

import (
	"strings"
	"testing"
)

func parkedForGoroutinesTest(ch chan struct{}) { <-ch }

// TestGoroutines counts exactly the goroutines whose stacks match.
func TestGoroutines(t *testing.T) {
	ch := make(chan struct{})
	for range 3 {
		go parkedForGoroutinesTest(ch)
	}
	match := func(g string) bool { return strings.Contains(g, "parkedForGoroutinesTest") }
	n := 0
	for range 1000 {
		if n = Goroutines(match); n == 3 {
			break
		}
	}
	close(ch)
	if n != 3 {
		t.Fatalf("counted %d goroutines, want 3", n)
	}
	if Goroutines(func(string) bool { return false }) != 0 {
		t.Fatal("counted goroutines that match nothing")
	}
}
