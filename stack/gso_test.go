package stack_test

import (
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/testenv"
	"github.com/tunsocks/tunsocks/stack"
	"github.com/tunsocks/tunsocks/tun/tuntest"
)

// withGSO lets the pipe take segmentation-offloaded writes (as the Linux TUN
// with IFF_VNET_HDR does); it segments them in software like the kernel, so
// the app stack, which verifies every checksum, sees ordinary segments.
func withGSO(disable bool) func(*stack.Config) {
	return func(c *stack.Config) {
		c.Device.(*tuntest.Device).SetGSO(65000)
		c.TCP.DisableGSO = disable
	}
}

// sender is a handler that writes size pseudo-random bytes to the app and
// closes, reporting their SHA-256.
func sender(t *testing.T, size int, sum chan<- [32]byte) handlerFuncs {
	return handlerFuncs{tcp: func(ctx context.Context, r *stack.TCPRequest) {
		c, err := r.Accept()
		if err != nil {
			t.Errorf("Accept: %v", err)
			return
		}
		defer c.Close()
		rng := rand.NewChaCha8([32]byte{1})
		h := sha256.New()
		buf := make([]byte, 100_000) // not a multiple of any MSS
		for left := size; left > 0; {
			n := min(left, len(buf))
			rng.Read(buf[:n])
			h.Write(buf[:n])
			if _, err := c.Write(buf[:n]); err != nil {
				t.Errorf("handler write: %v", err)
				return
			}
			left -= n
		}
		var s [32]byte
		copy(s[:], h.Sum(nil))
		sum <- s
		c.CloseWrite()
	}}
}

// stallReader reads c with a deadline renewed at each read: a bad checksum
// or header shows up as a stall, and a read that waits 20 s for a byte
// fails. A bound on the whole transfer instead failed a slow but moving one
// on a loaded machine under -race (11 of 16 MiB read in 20 s).
type stallReader struct{ c net.Conn }

func (r stallReader) Read(p []byte) (int, error) {
	r.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	return r.c.Read(p)
}

// TestTCPDownloadGSO: with a GSO device, data toward the app leaves the
// stack as large segments (counted by the device), and after the kernel-like
// segmentation every byte arrives intact with valid checksums, over IPv4 and
// IPv6; with DisableGSO no large segment is written.
func TestTCPDownloadGSO(t *testing.T) {
	const size = 16 << 20
	for _, tc := range []struct {
		name    string
		dst     string
		disable bool
	}{
		{"v4", "198.18.0.1:80", false},
		{"v6", "[2001:db8::1]:80", false},
		{"v4-disabled", "198.18.0.1:80", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sum := make(chan [32]byte, 1)
			e := setup(t, sender(t, size, sum), withGSO(tc.disable))
			c, err := e.app.DialTCP(e.ctx, netip.MustParseAddrPort(tc.dst))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			h := sha256.New()
			n, err := io.Copy(h, stallReader{c})
			if err != nil || n != size {
				t.Fatalf("app read %d bytes, %v; want %d", n, err, size)
			}
			want := testenv.Recv(t, sum, "the receiver's checksum")
			var got [32]byte
			copy(got[:], h.Sum(nil))
			if got != want {
				t.Fatal("SHA-256 of what the app read differs from what the handler sent")
			}
			pkts, segmented := e.dev.GSOCounters()
			if tc.disable {
				if pkts != 0 {
					t.Errorf("DisableGSO: %d packets went through WriteGSO", pkts)
				}
				return
			}
			// 16 MiB in MSS-sized segments would be ~11,500 packets; most
			// of it must have left as large segments.
			if segmented < 100 {
				t.Errorf("only %d of %d GSO writes were large segments", segmented, pkts)
			}
			// The device writes from pieces (the TUN's writev): the
			// link hands the segments' views over uncopied. (A lone
			// packet no larger than the MTU is written directly, copied,
			// see WritePackets.)
			if vec := e.dev.GSOVecWrites(); vec < 100 {
				t.Errorf("%d of %d GSO writes came in pieces (WriteGSOVec), want most", vec, pkts)
			}
			t.Logf("%d GSO writes, %d of them segmented", pkts, segmented)
		})
	}
}

// TestTCPEchoGSO: both directions and half-close still work with GSO on.
func TestTCPEchoGSO(t *testing.T) {
	e := setup(t, echoHandler(t, nil), withGSO(false))
	c, err := e.app.DialTCP(e.ctx, netip.MustParseAddrPort("198.18.0.1:7"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := make([]byte, 3<<20)
	rand.NewChaCha8([32]byte{2}).Read(msg)
	go func() {
		c.Write(msg)
		c.CloseWrite()
	}()
	back, err := io.ReadAll(c)
	if err != nil || sha256.Sum256(back) != sha256.Sum256(msg) {
		t.Fatalf("echo returned %d of %d bytes (err %v) or different bytes", len(back), len(msg), err)
	}
}

// TestReleaseBuffers: after a download, ReleaseBuffers hands the device
// writer's buffer pages back (counted in Stats), and a second download
// through the same buffers arrives intact.
func TestReleaseBuffers(t *testing.T) {
	const size = 2 << 20
	sum := make(chan [32]byte, 1)
	e := setup(t, sender(t, size, sum), withGSO(true)) // every packet goes through the batch buffers
	download := func() {
		t.Helper()
		c, err := e.app.DialTCP(e.ctx, netip.MustParseAddrPort("198.18.0.1:80"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		h := sha256.New()
		if n, err := io.Copy(h, stallReader{c}); err != nil || n != size {
			t.Fatalf("app read %d bytes, %v; want %d", n, err, size)
		}
		var got [32]byte
		copy(got[:], h.Sum(nil))
		if got != <-sum {
			t.Fatal("SHA-256 of what the app read differs from what the handler sent")
		}
	}
	download()
	if n := e.s.Stats().BuffersReleased; n != 0 {
		t.Fatalf("%d bytes released before ReleaseBuffers", n)
	}
	e.s.ReleaseBuffers()
	deadline := time.Now().Add(10 * time.Second)
	for e.s.Stats().BuffersReleased == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	released := e.s.Stats().BuffersReleased
	if runtime.GOOS == "linux" && released < 32<<10 {
		t.Fatalf("ReleaseBuffers released %d bytes, want at least one buffer's 32 KiB", released)
	}
	download()
}
