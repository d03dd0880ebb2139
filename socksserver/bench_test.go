package socksserver

import (
	"io"
	"net"
	"testing"
)

const benchBytes = 64 << 20

// sinkServer accepts connections, reads each to EOF and then closes it, so
// a sender that waits for the close knows every byte arrived.
func sinkServer(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(io.Discard, c)
				c.Close()
			}()
		}
	}()
	b.Cleanup(func() {
		ln.Close()
		<-done
	})
	return ln.Addr().String()
}

// transfer writes benchBytes on c, half-closes and waits for the far end
// to close.
func transfer(b *testing.B, c *net.TCPConn, buf []byte) {
	for sent := 0; sent < benchBytes; sent += len(buf) {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.CloseWrite()
	if _, err := io.Copy(io.Discard, c); err != nil {
		b.Fatal(err)
	}
	c.Close()
}

// BenchmarkConnectThroughput moves 64 MiB over loopback TCP, once straight
// to the sink and once through a SOCKS5 CONNECT of the server; via-server
// reports its throughput as a ratio of direct's from the same run.
//
//	go test -run '^$' -bench ConnectThroughput -benchtime 20x ./socksserver
func BenchmarkConnectThroughput(b *testing.B) {
	sink := sinkServer(b)
	buf := make([]byte, 256<<10)
	var directMBs float64
	mbs := func(b *testing.B) float64 {
		return float64(benchBytes) * float64(b.N) / 1e6 / b.Elapsed().Seconds()
	}
	b.Run("direct", func(b *testing.B) {
		b.SetBytes(benchBytes)
		for b.Loop() {
			c, err := net.Dial("tcp", sink)
			if err != nil {
				b.Fatal(err)
			}
			transfer(b, c.(*net.TCPConn), buf)
		}
		directMBs = mbs(b)
	})
	b.Run("via-server", func(b *testing.B) {
		srv := startServer(b, Config{})
		target := mustAP(sink)
		b.SetBytes(benchBytes)
		for b.Loop() {
			c, err := net.Dial("tcp", srv.addr)
			if err != nil {
				b.Fatal(err)
			}
			noAuth(b, c)
			send(b, c, req5(1, target))
			if rep, _ := readReply5(b, c); rep != 0 {
				b.Fatalf("reply %d", rep)
			}
			transfer(b, c.(*net.TCPConn), buf)
		}
		if directMBs > 0 {
			b.ReportMetric(mbs(b)/directMBs, "ratio-vs-direct")
		}
	})
}
