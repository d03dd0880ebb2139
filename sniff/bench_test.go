package sniff

import (
	"crypto/tls"
	"testing"

	"github.com/quic-go/quic-go"
)

// The CPU cost of a sniff, per flow:
//
//	go test -run '^$' -bench . ./sniff/
func BenchmarkStreamTLS(b *testing.B) {
	stream := goClientHello(b, &tls.Config{ServerName: "bench.example", InsecureSkipVerify: true})
	b.SetBytes(int64(len(stream)))
	for b.Loop() {
		if r := Stream(stream); r.Verdict != Found {
			b.Fatal(r)
		}
	}
}

func BenchmarkStreamHTTP(b *testing.B) {
	req := []byte("GET /index.html HTTP/1.1\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\nHost: bench.example\r\n\r\n")
	b.SetBytes(int64(len(req)))
	for b.Loop() {
		if r := Stream(req); r.Verdict != Found {
			b.Fatal(r)
		}
	}
}

// BenchmarkQUIC reads quic-go's first flight (two Initial datagrams):
// key derivation, header protection, AES-GCM, reassembly, ClientHello.
func BenchmarkQUIC(b *testing.B) {
	var q QUICSniffer
	d := quicInitials(b, "bench.example", quic.Version1, func(d [][]byte) bool {
		if len(d) == 0 {
			return false
		}
		_, v := q.Add(d[len(d)-1])
		return v != NeedMore
	})
	for b.Loop() {
		if _, v := QUICServerName(d...); v != Found {
			b.Fatal(v)
		}
	}
}
