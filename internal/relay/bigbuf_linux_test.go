package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

// sizeConn is the app side of a relay that the relay cannot splice on (its
// type hides *net.TCPConn): it records the largest Write, so a test sees
// how much the relay read from its source at once.
type sizeConn struct {
	*net.TCPConn
	mu      sync.Mutex
	largest int
}

func (c *sizeConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.largest = max(c.largest, len(p))
	c.mu.Unlock()
	return c.TCPConn.Write(p)
}

func (c *sizeConn) maxWrite() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.largest
}

// queued is how many bytes c's receive queue holds (FIONREAD).
func queued(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var ioErr error
	if err := rc.Control(func(fd uintptr) { n, ioErr = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }); err != nil {
		t.Fatal(err)
	}
	if ioErr != nil {
		t.Fatal(ioErr)
	}
	return n
}

// TestBulkReadsTakeBigBuffers: a direction whose kernel source holds more
// than a buffer's worth reads it in big buffers (bigBufSize) after its
// first full read, both on a Poller (polledHalf, the router's downloads)
// and without (copyHalf); every byte arrives, in order. Before, no read
// took more than bufSize, and a bulk download cost a system call (and
// usually an ACK to the upstream) per 128 KiB.
func TestBulkReadsTakeBigBuffers(t *testing.T) {
	for _, polled := range []bool{true, false} {
		name := "copyHalf"
		if polled {
			name = "polledHalf"
		}
		t.Run(name, func(t *testing.T) {
			pl, err := NewPoller()
			if err != nil {
				t.Fatal(err)
			}
			defer pl.Close()
			app, a := testenv.TCPPair(t)
			b, remote := testenv.TCPPair(t)
			// Room for more than a small buffer in b's receive queue
			// (the kernel caps it at net.core.rmem_max, doubled).
			if err := b.SetReadBuffer(1 << 20); err != nil {
				t.Fatal(err)
			}
			msg := make([]byte, 8<<20)
			rand.Read(msg)
			wrote := make(chan error, 1)
			go func() {
				_, err := remote.Write(msg)
				if err == nil {
					err = remote.CloseWrite()
				}
				wrote <- err
			}()
			sc := &sizeConn{TCPConn: a}
			opts := StreamOptions{}
			if polled {
				opts.Poller = pl
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan struct{})
			go func() {
				defer close(done)
				Stream(ctx, sc, b, opts)
			}()
			// The app reads nothing yet: the relay's writes to it block
			// once its socket buffers are full, and b's receive queue
			// fills up behind them.
			want := bufSize + 64<<10
			for end := time.Now().Add(10 * time.Second); queued(t, b) < want; {
				if time.Now().After(end) {
					t.Skipf("the receive queue never held %d bytes (net.core.rmem_max too small?); it holds %d", want, queued(t, b))
				}
				time.Sleep(5 * time.Millisecond)
			}
			app.SetReadDeadline(time.Now().Add(30 * time.Second))
			got, err := io.ReadAll(app)
			if err != nil {
				t.Fatalf("app read after %d bytes: %v", len(got), err)
			}
			if !bytes.Equal(got, msg) {
				t.Fatalf("app got %d bytes, not the %d sent in order", len(got), len(msg))
			}
			if err := testenv.Recv(t, wrote, "the remote's write's end"); err != nil {
				t.Fatal(err)
			}
			if m := sc.maxWrite(); m <= bufSize {
				t.Errorf("largest read of the relay = %d bytes, want more than %d (a big buffer) with %d+ queued", m, bufSize, want)
			}
			app.Close()
			cancel()
			testenv.Recv(t, done, "the relay's return")
		})
	}
}
