package tun

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// Small reads and writes through vnetFile's raw calls allocate nothing:
// their callbacks for the RawConn are made once per device (a closure per
// call escaped and cost three allocations, a read and a write or two per
// packet of a round trip). A datagram socket pair stands for the TUN
// descriptor: one packet per read and write, non-blocking.
func TestVnetFileSmallReadsAndWritesAllocateNothing(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, b := os.NewFile(uintptr(fds[0]), "a"), os.NewFile(uintptr(fds[1]), "b")
	defer a.Close()
	defer b.Close()
	va, vb := newVnetFile(a), newVnetFile(b)
	if va.rc == nil || vb.rc == nil {
		t.Fatal("a non-blocking descriptor is not read with raw calls")
	}
	pkt := []byte("one small packet")
	buf := make([]byte, 1500)
	trip := func() {
		if n, err := va.Write(pkt); n != len(pkt) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
		if n, err := vb.Read(buf); n != len(pkt) || err != nil || string(buf[:n]) != string(pkt) {
			t.Fatalf("Read = %d, %v (%q); want the packet", n, err, buf[:n])
		}
	}
	trip()
	if a := testing.AllocsPerRun(100, trip); a != 0 {
		t.Errorf("%.1f allocations per packet written and read, want 0", a)
	}
	// A read that finds nothing waits in the poller and counts.
	waits := vb.waits.Load()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if n, err := vb.Read(buf); n != len(pkt) || err != nil {
			t.Errorf("Read after a wait = %d, %v", n, err)
		}
	}()
	for tries := 0; vb.waits.Load() == waits; tries++ {
		if tries == 10000 {
			t.Fatal("the read never waited in the poller")
		}
		select {
		case <-done:
			t.Fatal("the read returned before anything was written")
		default:
		}
		// The reader has not reached the poller yet.
		unix.Nanosleep(&unix.Timespec{Nsec: 1e6}, nil)
	}
	if _, err := va.Write(pkt); err != nil {
		t.Fatal(err)
	}
	<-done
}
