// Package handoff lets a goroutine that is about to block hand the work it
// readies to its own processor, instead of having the scheduler wake an
// idle one for it.
//
// Whenever a goroutine readies another (a channel send, a sleep.Waker, a
// go statement) while a processor (P) is idle, Go's scheduler wakes an
// idle thread (runtime.wakep) to look for the new work. When the readying
// goroutine is about to block anyway (it has handed its packet on and goes
// back to wait for the next one), that thread wakes, finds nothing (the
// work is queued behind the running goroutine, to run the moment it
// blocks) and sleeps again: two context switches and a few microseconds
// of another core's time for nothing, or the work moves to a cold core.
// On tunsocks' 1-byte round trip that was about three of its five context
// switches, and most of the difference with GOMAXPROCS=1.
//
// Hold and Release bracket such a hand-off; Wake does the held-back
// wakeup when the goroutine turns out not to block after all. They
// adjust the scheduler's count of spinning threads as gVisor's
// sync.Goready(g, 0, false) does (and through gVisor's own helpers, which
// gVisor keeps in step with the runtime: see the package's test). Where
// gVisor cannot do that (any GOARCH but amd64), Hold and Release do
// nothing and the scheduler wakes threads as usual.
package handoff

import (
	"runtime"
	_ "unsafe" // go:linkname

	gsync "gvisor.dev/gvisor/pkg/sync"
)

// Hold makes goroutines that the caller readies or starts until Release
// queue on the caller's processor without waking an idle one: they run
// once the caller blocks, or when a thread looks for work anyway. Call
// it only when the caller is about to block (or calls Wake if it does
// not), and keep the section short: it holds back every wakeup in the
// process, other goroutines' too.
//
//go:nosplit
func Hold() { preGoReadyWakeSuppression() }

// Release ends Hold.
//
//go:nosplit
func Release() { postGoReadyWakeSuppression() }

// Yield runs the goroutines the caller readied under Hold now, on the
// caller's processor, before the caller goes on: the caller goes to the
// back of the run queue (runtime.Gosched) and resumes once they have
// run or blocked. Call it between Hold and Release, which keeps the
// scheduler from waking an idle processor for the caller meanwhile, and
// only when the queue is short (the process was idle): the caller waits
// behind everything queued.
func Yield() { runtime.Gosched() }

// Wake wakes an idle processor if there is one and no thread is looking
// for work already (runtime.wakep): for a goroutine that held a hand-off
// back and then did not block.
func Wake() { gsync.Wakep() }

// These are gVisor's, behind sync.Goready's wakep=false: they add and
// take one from runtime.sched.nmspinning on amd64 and do nothing
// elsewhere.

//go:linkname preGoReadyWakeSuppression gvisor.dev/gvisor/pkg/sync.preGoReadyWakeSuppression
func preGoReadyWakeSuppression()

//go:linkname postGoReadyWakeSuppression gvisor.dev/gvisor/pkg/sync.postGoReadyWakeSuppression
func postGoReadyWakeSuppression()
