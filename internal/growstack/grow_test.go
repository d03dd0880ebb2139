package growstack

import "testing"

// BenchmarkGoroutineDeepCall compares a new goroutine that goes about
// 10 KiB deep, as a request's goroutine does under the dial and Accept,
// with and without Grow first.
// Run: go test -run '^$' -bench GoroutineDeepCall ./internal/growstack
func BenchmarkGoroutineDeepCall(b *testing.B) {
	for _, grow := range []bool{false, true} {
		name := "plain"
		if grow {
			name = "Grow"
		}
		b.Run(name, func(b *testing.B) {
			done := make(chan int)
			for b.Loop() {
				go func() {
					if grow {
						Grow()
					}
					done <- deepCall(40)
				}()
				<-done
			}
		})
	}
}

// deepCall recurses n times with a frame of about 256 bytes each.
//
//go:noinline
func deepCall(n int) int {
	var pad [32]int
	pad[n%32] = n
	if n == 0 {
		return pad[0]
	}
	return deepCall(n-1) + pad[n%32]
}
