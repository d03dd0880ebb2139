package tuntest

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func bufs(n, size int) ([][]byte, []int) {
	b := make([][]byte, n)
	for i := range b {
		b[i] = make([]byte, size)
	}
	return b, make([]int, n)
}

func TestInjectThenReadBatches(t *testing.T) {
	dev, peer := NewPipe(1500)
	defer dev.Close()
	for i := range 5 {
		if err := peer.Inject([]byte{0x45, byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	b, sizes := bufs(3, 16+1500)
	n, err := dev.Read(b, sizes, 16)
	if err != nil || n != 3 {
		t.Fatalf("Read = %d, %v; want 3 packets", n, err)
	}
	for i := range n {
		if got := b[i][16 : 16+sizes[i]]; !bytes.Equal(got, []byte{0x45, byte(i)}) {
			t.Fatalf("packet %d = %x", i, got)
		}
	}
	n, err = dev.Read(b, sizes, 16)
	if err != nil || n != 2 || b[1][17] != 4 {
		t.Fatalf("second Read = %d, %v", n, err)
	}
}

func TestReadOverflowIsAnError(t *testing.T) {
	dev, peer := NewPipe(1500)
	defer dev.Close()
	if err := peer.Inject(make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	b, sizes := bufs(1, 50)
	if _, err := dev.Read(b, sizes, 10); err == nil {
		t.Fatal("Read of oversized packet succeeded")
	}
	if _, _, drops := dev.Counters(); drops != 1 {
		t.Fatalf("drops = %d, want 1", drops)
	}
}

func TestWriteDeliversCopiesAndChecksOffsetAndMTU(t *testing.T) {
	dev, peer := NewPipe(100)
	defer dev.Close()
	b := [][]byte{append(make([]byte, 10), 1, 2, 3), append(make([]byte, 10), 4)}
	if n, err := dev.Write(b, 10); err != nil || n != 2 {
		t.Fatalf("Write = %d, %v", n, err)
	}
	b[0][10] = 99 // the peer must hold a copy
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, want := range [][]byte{{1, 2, 3}, {4}} {
		got, err := peer.Next(ctx)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("Next = %x, %v; want %x", got, err, want)
		}
	}
	if _, err := dev.Write(b, 4); err == nil {
		t.Fatal("Write with offset 4 succeeded; want headroom error")
	}
	if _, err := dev.Write([][]byte{make([]byte, 10+101)}, 10); err == nil {
		t.Fatal("Write above MTU succeeded")
	}
}

func TestCloseUnblocksEverything(t *testing.T) {
	dev, peer := NewPipe(1500)
	errc := make(chan error, 2)
	go func() {
		b, s := bufs(1, 1600)
		_, err := dev.Read(b, s, 16)
		errc <- err
	}()
	go func() {
		// Fill the outbound queue so the last Write blocks.
		pkt := [][]byte{make([]byte, 20)}
		for {
			if _, err := dev.Write(pkt, 10); err != nil {
				errc <- err
				return
			}
		}
	}()
	time.Sleep(10 * time.Millisecond) // let both block; correctness does not depend on it
	if err := peer.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-errc; !errors.Is(err, os.ErrClosed) {
			t.Fatalf("err = %v, want os.ErrClosed", err)
		}
	}
	if err := peer.Inject([]byte{1}); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Inject after close = %v", err)
	}
	if _, err := peer.Next(context.Background()); !errors.Is(err, os.ErrClosed) && err != nil {
		t.Fatalf("Next after close = %v", err)
	}
}
