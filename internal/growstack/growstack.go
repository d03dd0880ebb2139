// Package growstack grows a new goroutine's stack in one step.
package growstack

// Grow makes the calling goroutine's stack about 16 KiB in one step, while
// it is still nearly empty and cheap to copy. A goroutine starts with the
// runtime's few KiB; one that soon goes deep, as every call that writes
// into the netstack does (gVisor's TCP send path down to the TUN device),
// grows doubling by doubling, each time copying and adjusting every frame
// it has by then: at a high connection rate that took about 4.5% of
// tunsocks' CPU under the stack package's request handler and 2.6% under
// the relay's upstream reader (go tool pprof of `tunsocks run
// --cpuprofile` under scripts/bench.sh, gVisor
// 20260905035102-160fafc42237). The memory is what the goroutine would
// reach anyway, and the garbage collector shrinks the stack again while
// the goroutine idles.
//
//go:noinline
func Grow() {
	var b [growBytes]byte
	sink(b[:])
}

const growBytes = 12 << 10

//go:noinline
func sink(b []byte) { _ = b[len(b)-1] }
