package handoff

import (
	"os"
	"os/exec"
	"runtime"
	"testing"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// switches is the process's context switches so far, all threads.
func switches(t *testing.T) int64 {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return ru.Nvcsw + ru.Nivcsw
}

// echoRounds sends one byte n times through cat(1), another process, and
// back, as a relay does a request through an upstream: a reader
// goroutine reads each byte as it comes back and hands it to a writer
// goroutine, which sends the next byte to cat; each hands over with the
// hand-off held (Hold ... Release) or not, and blocks right after. It
// returns the process's context switches per round.
func echoRounds(t *testing.T, n int, hold bool) float64 {
	toCat, catIn, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	catOut, fromCat, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cat := exec.Command("cat")
	cat.Stdin, cat.Stdout = toCat, fromCat
	if err := cat.Start(); err != nil {
		t.Fatalf("cat: %v", err)
	}
	toCat.Close()
	fromCat.Close()
	defer func() {
		catIn.Close()
		cat.Wait()
		catOut.Close()
	}()

	got := make(chan byte)
	handOver := func(b byte) {
		if hold {
			Hold()
		}
		got <- b // the writer waits: this readies it
		if hold {
			Release()
		}
	}
	readerDone := make(chan error, 1)
	go func() {
		b := make([]byte, 1)
		for range n {
			if _, err := catOut.Read(b); err != nil {
				readerDone <- err
				return
			}
			handOver(b[0])
		}
		readerDone <- nil
	}()
	before := switches(t)
	b := []byte{0}
	for i := range n {
		b[0] = byte(i)
		if _, err := catIn.Write(b); err != nil {
			t.Fatal(err)
		}
		if v := <-got; v != byte(i) {
			t.Fatalf("round %d: got %d back", i, v)
		}
	}
	after := switches(t)
	if err := <-readerDone; err != nil {
		t.Fatal(err)
	}
	return float64(after-before) / float64(n)
}

// Handing work to another goroutine and then blocking, as tunsocks' TUN
// reader and gVisor's TCP processor do, costs the process a thread
// wakeup and sleep per hand-off whenever a processor is idle, which
// between two packets of a request/response exchange they all are: the
// scheduler wakes a thread for the readied goroutine, which finds it
// already taken. Held, the goroutine runs on the same thread and the
// hand-off costs none. Counted over many rounds through another
// process, with two processors.
func TestHoldSparesThreadWakeups(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skipf("Hold does nothing on %s (gVisor suppresses wakeups on amd64 only)", runtime.GOARCH)
	}
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	const n = 2000
	echoRounds(t, 100, true) // threads started, stacks grown
	plain := echoRounds(t, n, false)
	held := echoRounds(t, n, true)
	t.Logf("context switches per round: %.3f plain, %.3f held", plain, held)
	if held > plain-0.25 {
		t.Errorf("rounds with held hand-offs cost %.3f context switches each, plain ones %.3f: want at least 0.25 fewer", held, plain)
	}
}
