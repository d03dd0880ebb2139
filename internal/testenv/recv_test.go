package testenv

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
)

// fatalRecorder is a testing.TB whose Fatalf records the message and
// ends the calling goroutine, as the real one does.
type fatalRecorder struct {
	testing.TB
	msg chan string
}

func (f fatalRecorder) Helper() {}

func (f fatalRecorder) Fatalf(format string, args ...any) {
	f.msg <- fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// TestRecv: Recv hands over what comes, the zero value from a closed
// channel as a bare receive does, and fails naming what did not come when
// nothing does in time.
func TestRecv(t *testing.T) {
	ch := make(chan int, 1)
	ch <- 7
	if v := Recv(t, ch, "seven"); v != 7 {
		t.Errorf("Recv = %d, want 7", v)
	}
	close(ch)
	if v := Recv(t, ch, "the close"); v != 0 {
		t.Errorf("Recv of a closed channel = %d, want 0", v)
	}

	f := fatalRecorder{TB: t, msg: make(chan string, 1)}
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		recvWithin(f, make(chan int), "the reply", time.Millisecond)
		t.Error("recvWithin returned though nothing came")
	}()
	<-returned
	select {
	case msg := <-f.msg:
		if !strings.Contains(msg, "the reply did not come within 1ms") {
			t.Errorf("failure message %q", msg)
		}
	default:
		t.Error("recvWithin did not fail")
	}
}
