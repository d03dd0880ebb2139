package sniff

import (
	"crypto/tls"
	"testing"

	"github.com/quic-go/quic-go"
)

// The fuzz targets check, beyond "no panic", the contract the router relies
// on (see checkIncremental): verdicts do not change once given, and every
// name reported is a normalised DNS name. Seeds are live captures.

func FuzzTLSServerName(f *testing.F) {
	for _, cfg := range []*tls.Config{
		{ServerName: "seed.example", InsecureSkipVerify: true},
		{ServerName: "tls12.example", MaxVersion: tls.VersionTLS12},
		{InsecureSkipVerify: true},
	} {
		stream := goClientHello(f, cfg)
		f.Add(stream)
		f.Add(recordsOf(handshakeOf(f, stream), 97))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fuzzIncremental(t, TLSServerName, b)
	})
}

func FuzzHTTPHost(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\n\r\n",
		"GET http://u@abs.example/x HTTP/1.1\r\n\r\n",
		"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example\r\n\r\n",
		"POST /x HTTP/1.0\nhost: [::1]\n\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fuzzIncremental(t, HTTPHost, b)
	})
}

func FuzzStream(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"))
	f.Add(goClientHello(f, &tls.Config{ServerName: "seed.example", InsecureSkipVerify: true}))
	f.Fuzz(func(t *testing.T, b []byte) {
		fuzzIncremental(t, func(b []byte) (string, Verdict) {
			r := Stream(b)
			if (r.Verdict == Found || r.Verdict == NoName) != (r.Protocol != Unknown) {
				t.Fatalf("%+v: a protocol exactly with Found and NoName", r)
			}
			return r.Host, r.Verdict
		}, b)
	})
}

// FuzzQUICDatagram fuzzes whole datagrams: the header parser, the packet
// protection and, through the seeds, the frames of real Initials.
func FuzzQUICDatagram(f *testing.F) {
	for _, v := range []quic.Version{quic.Version1, quic.Version2} {
		var q QUICSniffer
		d := quicInitials(f, "seed.example", v, func(d [][]byte) bool {
			if len(d) == 0 {
				return false
			}
			_, verdict := q.Add(d[len(d)-1])
			return verdict != NeedMore
		})
		for _, dg := range d {
			f.Add(dg, d[0])
		}
	}
	f.Fuzz(func(t *testing.T, first, second []byte) {
		var q QUICSniffer
		h1, v1 := q.Add(first)
		h2, v2 := q.Add(second)
		checkName(t, h1, v1)
		checkName(t, h2, v2)
		if v1 != NeedMore && (v2 != v1 || h2 != h1) {
			t.Fatalf("verdict changed: %q %v, then %q %v", h1, v1, h2, v2)
		}
	})
}

// FuzzQUICFrames fuzzes the plaintext of Initial packets, sealed so that
// they pass decryption: the frame parser, CRYPTO reassembly (a second
// payload arrives in a second packet) and the ClientHello parser.
func FuzzQUICFrames(f *testing.F) {
	hs := handshakeOf(f, goClientHello(f, &tls.Config{ServerName: "seed.example", InsecureSkipVerify: true}))
	f.Add(cryptoFrame(0, hs), []byte{})
	f.Add(append([]byte{0x01}, cryptoFrame(100, hs[100:])...), append(ackFrame(), cryptoFrame(0, hs[:100])...))
	f.Add([]byte{0x02, 0, 0, 0, 0, 0x1c, 0, 0, 1, 'x'}, cryptoFrame(0, hs[:10]))
	dcid := []byte{9, 8, 7, 6, 5, 4, 3, 2}
	f.Fuzz(func(t *testing.T, p1, p2 []byte) {
		if len(p1) > 4096 || len(p2) > 4096 {
			return
		}
		var q QUICSniffer
		h1, v1 := q.Add(sealInitial(t, quicV1, dcid, 0, 1, p1))
		h2, v2 := q.Add(sealInitial(t, quicV1, dcid, 1, 1, p2))
		checkName(t, h1, v1)
		checkName(t, h2, v2)
		if v1 != NeedMore && (v2 != v1 || h2 != h1) {
			t.Fatalf("verdict changed: %q %v, then %q %v", h1, v1, h2, v2)
		}
		if len(q.ranges) > maxQUICRanges || len(q.crypto) > MaxQUICCrypto {
			t.Fatalf("holds %d ranges, %d bytes", len(q.ranges), len(q.crypto))
		}
		for i, r := range q.ranges {
			if r.start >= r.end || r.end > len(q.crypto) || i > 0 && q.ranges[i-1].end >= r.start {
				t.Fatalf("ranges %v not sorted and disjoint (stream of %d)", q.ranges, len(q.crypto))
			}
		}
	})
}

// fuzzIncremental checks f's contract on b: on every prefix when b is short,
// else on b and a sample of prefixes.
func fuzzIncremental(t *testing.T, f func([]byte) (string, Verdict), b []byte) {
	if len(b) <= 2048 {
		checkIncremental(t, f, b)
		return
	}
	host, v := f(b)
	checkName(t, host, v)
	for _, n := range []int{len(b) / 2, len(b) - 1, 1024} {
		h, vp := f(b[:n])
		if vp != NeedMore && (vp != v || h != host) {
			t.Fatalf("prefix %d: %q, %v; whole: %q, %v", n, h, vp, host, v)
		}
	}
}

func checkName(t *testing.T, host string, v Verdict) {
	t.Helper()
	if v != Found {
		if host != "" {
			t.Fatalf("%v with name %q", v, host)
		}
		return
	}
	if n, ok := normalizeName([]byte(host)); !ok || n != host {
		t.Fatalf("found %q, not a normalised name", host)
	}
}
