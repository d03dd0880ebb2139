package wg

import (
	"runtime"
	"testing"
)

// BenchmarkPipe moves 1400-byte packets through a Pipe in batches of 128,
// one goroutine writing and one reading, as wireguard-go and the stack do:
// the cost the pipe adds per packet.
//
//	go test -run '^$' -bench Pipe ./wg/
func BenchmarkPipe(b *testing.B) {
	const size, batch = 1400, 128
	p := NewPipe(PipeConfig{MTU: 1420, Batch: batch})
	defer p.Close()
	w, r := p.WireGuardEnd(), p.StackEnd()
	out := make([][]byte, batch)
	for i := range out {
		out[i] = make([]byte, 16+size)
	}
	in := make([][]byte, batch)
	for i := range in {
		in[i] = make([]byte, 16+1420)
	}
	sizes := make([]int, batch)
	done := make(chan int)
	b.SetBytes(size)
	b.ResetTimer()
	go func() {
		got := 0
		for got < b.N {
			n, err := r.Read(in, sizes, 16)
			if err != nil {
				break
			}
			got += n
		}
		done <- got
	}()
	for sent := 0; sent < b.N; {
		n := min(batch, b.N-sent)
		w.Write(out[:n], 16)
		sent += n
		// Let the reader keep up: the pipe drops what does not fit,
		// which a benchmark of the copy path should not count.
		for {
			to, _ := p.Stats()
			if int(to.Packets)+DefaultPipeQueue-batch >= sent {
				break
			}
			runtime.Gosched()
		}
	}
	got := <-done
	b.StopTimer()
	if to, _ := p.Stats(); to.Drops > 0 || got != b.N {
		b.Fatalf("%d of %d packets read, %d dropped", got, b.N, to.Drops)
	}
}
