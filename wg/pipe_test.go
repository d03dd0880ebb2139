package wg

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

func pkt(n int, fill byte) []byte {
	b := make([]byte, 16+n)
	for i := 16; i < len(b); i++ {
		b[i] = fill
	}
	return b
}

func TestPipeBatchesBothWays(t *testing.T) {
	p := NewPipe(PipeConfig{MTU: 1500, Queue: 8, Batch: 4})
	defer p.Close()
	a, b := p.WireGuardEnd(), p.StackEnd()
	if n, err := a.Write([][]byte{pkt(100, 1), pkt(200, 2), pkt(300, 3)}, 16); n != 3 || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
	bufs := [][]byte{make([]byte, 2000), make([]byte, 2000), make([]byte, 2000), make([]byte, 2000)}
	sizes := make([]int, 4)
	n, err := b.Read(bufs, sizes, 16)
	if err != nil || n != 3 {
		t.Fatalf("read: %d, %v", n, err)
	}
	for i, want := range []int{100, 200, 300} {
		if sizes[i] != want || bufs[i][16] != byte(i+1) || bufs[i][16+want-1] != byte(i+1) {
			t.Fatalf("packet %d: size %d (want %d), first byte %d", i, sizes[i], want, bufs[i][16])
		}
	}
	// The other way, with a read batch smaller than what is queued.
	b.Write([][]byte{pkt(10, 7), pkt(10, 8), pkt(10, 9)}, 16)
	n, err = a.Read(bufs[:2], sizes, 0)
	if err != nil || n != 2 || sizes[0] != 10 || bufs[1][0] != 8 {
		t.Fatalf("read of 2: %d, %v, sizes %v", n, err, sizes[:2])
	}
	n, _ = a.Read(bufs, sizes, 0)
	if n != 1 || bufs[0][0] != 9 {
		t.Fatalf("third packet: n=%d first byte %d", n, bufs[0][0])
	}
	to, from := p.Stats()
	if to.Packets != 3 || from.Packets != 3 || to.Drops+from.Drops != 0 {
		t.Fatalf("stats %+v %+v", to, from)
	}
	if a.BatchSize() != 4 || b.BatchSize() != 4 {
		t.Fatal("batch size")
	}
	if m, _ := b.MTU(); m != 1500 {
		t.Fatalf("MTU %d", m)
	}
}

func TestPipeDropsWhenFullAndCounts(t *testing.T) {
	p := NewPipe(PipeConfig{Queue: 4})
	defer p.Close()
	a, b := p.WireGuardEnd(), p.StackEnd()
	var batch [][]byte
	for i := range 10 {
		batch = append(batch, pkt(50, byte(i)))
	}
	if n, err := a.Write(batch, 16); n != 10 || err != nil {
		t.Fatalf("a full queue must not fail or block a write: %d, %v", n, err)
	}
	to, _ := p.Stats()
	if to.Drops != 6 {
		t.Fatalf("drops %d, want 6", to.Drops)
	}
	bufs := make([][]byte, 10)
	for i := range bufs {
		bufs[i] = make([]byte, 100)
	}
	n, _ := b.Read(bufs, make([]int, 10), 0)
	if n != 4 || bufs[3][0] != 3 {
		t.Fatalf("read %d packets, the last starting with %d: the first four should be kept", n, bufs[3][0])
	}
}

func TestPipeOversizeIsDroppedNotAnError(t *testing.T) {
	p := NewPipe(PipeConfig{MTU: 1280})
	defer p.Close()
	a, b := p.WireGuardEnd(), p.StackEnd()
	// A peer with a bigger MTU than ours, then a normal packet.
	a.Write([][]byte{pkt(1400, 1), pkt(60, 2)}, 16)
	bufs := [][]byte{make([]byte, 16+1280), make([]byte, 16+1280)}
	sizes := make([]int, 2)
	n, err := b.Read(bufs, sizes, 16)
	if err != nil || n != 1 || sizes[0] != 60 || bufs[0][16] != 2 {
		t.Fatalf("read %d, %v, size %d: want only the 60-byte packet", n, err, sizes[0])
	}
	if to, _ := p.Stats(); to.Oversize != 1 {
		t.Fatalf("oversize %d, want 1", to.Oversize)
	}
	// Only an oversize packet queued: Read waits for the next one.
	a.Write([][]byte{pkt(1400, 3)}, 16)
	got := make(chan int, 1)
	go func() {
		n, _ := b.Read(bufs, sizes, 16)
		got <- n
	}()
	select {
	case n := <-got:
		t.Fatalf("Read returned %d packets with only an oversize one queued", n)
	case <-time.After(50 * time.Millisecond):
	}
	a.Write([][]byte{pkt(70, 4)}, 16)
	if n := testenv.Recv(t, got, "the blocked Read's return"); n != 1 || sizes[0] != 70 {
		t.Fatalf("read %d, size %d", n, sizes[0])
	}
}

func TestPipeCloseUnblocksAndRefuses(t *testing.T) {
	p := NewPipe(PipeConfig{})
	a, b := p.WireGuardEnd(), p.StackEnd()
	errc := make(chan error, 1)
	go func() {
		_, err := a.Read([][]byte{make([]byte, 100)}, []int{0}, 0)
		errc <- err
	}()
	time.Sleep(10 * time.Millisecond)
	if err := b.Close(); err != nil { // either end closes the pipe
		t.Fatal(err)
	}
	if err := testenv.Recv(t, errc, "the blocked Read's end"); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("blocked Read after Close: %v, want os.ErrClosed", err)
	}
	if _, err := a.Write([][]byte{pkt(10, 1)}, 16); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Write after Close: %v", err)
	}
	if _, ok := <-a.Events(); ok {
		t.Fatal("events channel still open")
	}
	if err := a.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
}

func TestPipeReadNeedsSizes(t *testing.T) {
	p := NewPipe(PipeConfig{})
	defer p.Close()
	if _, err := p.StackEnd().Read([][]byte{nil, nil}, []int{0}, 0); err == nil {
		t.Fatal("len(sizes) < len(bufs) accepted")
	}
}
