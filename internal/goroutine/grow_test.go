package goroutine

import "testing"

func TestGrowStack(t *testing.T) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		GrowStack()
		GrowStack() // a second call finds the room already there
	}()
	<-done
}

// BenchmarkGoroutineDeepCall compares a goroutine that goes 10 KiB deep
// with and without GrowStack first.
// Run: go test -run '^$' -bench . ./internal/goroutine
func BenchmarkGoroutineDeepCall(b *testing.B) {
	for _, grow := range []bool{false, true} {
		name := "plain"
		if grow {
			name = "grow"
		}
		b.Run(name, func(b *testing.B) {
			done := make(chan struct{})
			for range b.N {
				go func() {
					if grow {
						GrowStack()
					}
					deep(40)
					done <- struct{}{}
				}()
				<-done
			}
		})
	}
}

//go:noinline
func deep(n int) int {
	var pad [256]byte
	pad[n%256] = byte(n)
	if n == 0 {
		return int(pad[0])
	}
	return deep(n-1) + int(pad[n%256])
}
