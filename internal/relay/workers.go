package relay

import (
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/tunsocks/tunsocks/internal/growstack"
)

// workers are goroutines that run the notified directions of Streams
// given a Poller (notifiedHalf.wake) in place of a goroutine started per
// notification. A request of a request/response exchange is one
// notification: started afresh each time, the direction's goroutine came
// with a small stack that grew at once (growstack.Grow, a stack copy),
// and was torn down again when the request had gone upstream, all on the
// request's way there. A worker keeps its grown stack and waits for the
// next direction to run. They are few (maxWorkers, started as needed,
// kept until the Poller closes): an idle connection still holds none.
type workers struct {
	jobs    chan *notifiedHalf // unbuffered: a send succeeds only to a worker waiting
	quit    chan struct{}      // closed by stop: waiting workers return
	started atomic.Int32       // workers running or waiting
	max     int32
	grows   atomic.Uint64 // stack growths (growstack.Grow) the workers made, for tests

	mu      sync.Mutex
	stopped bool
}

// maxWorkers is how many workers a Poller keeps: twice the processors,
// at least 4, so that directions whose upstream is slow to take their
// bytes (a worker waits with them) leave others to run; beyond that a
// notification starts a goroutine of its own, as without workers.
func maxWorkers() int32 { return int32(max(4, 2*runtime.GOMAXPROCS(0))) }

func newWorkers() workers {
	return workers{jobs: make(chan *notifiedHalf), quit: make(chan struct{}), max: maxWorkers()}
}

// run hands h to a waiting worker, or starts one for it; false when
// neither can be (the workers are stopped, or maxWorkers are busy): the
// caller starts a goroutine itself.
func (w *workers) run(h *notifiedHalf) bool {
	select {
	case w.jobs <- h:
		return true
	default:
	}
	if w.started.Add(1) > w.max {
		w.started.Add(-1)
		return false
	}
	w.mu.Lock()
	stopped := w.stopped
	w.mu.Unlock()
	if stopped {
		w.started.Add(-1)
		return false
	}
	go w.work(h)
	return true
}

// work runs h, then each direction handed to it, until the workers stop.
// It grows its stack once, for all of them (see notifiedHalf.runGrown).
func (w *workers) work(h *notifiedHalf) {
	defer w.started.Add(-1)
	growstack.Grow()
	w.grows.Add(1)
	for {
		h.runGrown()
		h = nil
		select {
		case h = <-w.jobs:
		case <-w.quit:
			return
		}
	}
}

// stop makes waiting workers return, and busy ones once their direction
// has parked or ended; later directions get goroutines of their own.
func (w *workers) stop() {
	w.mu.Lock()
	if !w.stopped {
		w.stopped = true
		close(w.quit)
	}
	w.mu.Unlock()
}
