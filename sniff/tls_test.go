package sniff

import (
	"bytes"
	"crypto/tls"
	"testing"
)

func TestTLSGoClient(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
		host string
		v    Verdict
	}{
		{"tls13", &tls.Config{ServerName: "Example.COM", InsecureSkipVerify: true}, "example.com", Found},
		{"tls12 only", &tls.Config{ServerName: "www.example.org", MaxVersion: tls.VersionTLS12}, "www.example.org", Found},
		{"post-quantum key share", &tls.Config{ServerName: "pq.example", CurvePreferences: []tls.CurveID{tls.X25519MLKEM768}}, "pq.example", Found},
		{"no server name", &tls.Config{InsecureSkipVerify: true}, "", NoName},
		// crypto/tls leaves out server_name for an IP address.
		{"ip address", &tls.Config{ServerName: "192.0.2.1", InsecureSkipVerify: true}, "", NoName},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stream := goClientHello(t, tc.cfg)
			host, v := TLSServerName(stream)
			if host != tc.host || v != tc.v {
				t.Fatalf("TLSServerName = %q, %v; want %q, %v", host, v, tc.host, tc.v)
			}
			if got := Stream(stream); got.Host != tc.host || got.Verdict != tc.v || got.Protocol != TLS {
				t.Fatalf("Stream = %+v", got)
			}
			if want := oracleServerName(t, stream); want != "" && !equalFoldASCII(want, tc.host) {
				t.Fatalf("crypto/tls's server sees %q, the sniffer %q", want, host)
			}
			checkIncremental(t, TLSServerName, stream)
		})
	}
}

// A ClientHello split across records of every size (and so across TCP
// segments anywhere) still gives its name, and only once it is whole.
func TestTLSSplitRecords(t *testing.T) {
	stream := goClientHello(t, &tls.Config{ServerName: "split.example",
		CurvePreferences: []tls.CurveID{tls.X25519MLKEM768, tls.X25519}})
	hs := handshakeOf(t, stream)
	if len(hs) < 1400 {
		t.Fatalf("ClientHello of %d bytes; want a big one (ML-KEM key share)", len(hs))
	}
	for _, size := range []int{1, 2, 3, 5, 64, 500, 1000, len(hs) - 1} {
		split := recordsOf(hs, size)
		if size >= 64 {
			// crypto/tls's server takes the same split: it is valid TLS.
			if got := oracleServerName(t, split); got != "split.example" {
				t.Fatalf("size %d: oracle sees %q", size, got)
			}
		}
		host, v := TLSServerName(split)
		if v != Found || host != "split.example" {
			t.Fatalf("records of %d bytes: %q, %v", size, host, v)
		}
		checkIncremental(t, TLSServerName, split)
	}
}

// The name is known before the ClientHello is whole when server_name comes
// early, and bytes after the ClientHello (0-RTT data, a second record type)
// change nothing.
func TestTLSEarlyAndTrailing(t *testing.T) {
	stream := goClientHello(t, &tls.Config{ServerName: "early.example", InsecureSkipVerify: true})
	hs := handshakeOf(t, stream)
	sni := bytes.Index(hs, []byte("early.example"))
	if sni < 0 {
		t.Fatal("name not in the ClientHello")
	}
	cut := recordsOf(hs, len(hs))[:5+sni+len("early.example")]
	if host, v := TLSServerName(cut); v != Found || host != "early.example" {
		t.Fatalf("ClientHello cut after its name: %q, %v", host, v)
	}
	trailing := append(recordsOf(hs, 100), 23, 3, 3, 0, 1, 'x') // application_data
	if host, v := TLSServerName(trailing); v != Found || host != "early.example" {
		t.Fatalf("with a record after the ClientHello: %q, %v", host, v)
	}
}

func TestTLSNotMatch(t *testing.T) {
	hs := handshakeOf(t, goClientHello(t, &tls.Config{ServerName: "x.example", InsecureSkipVerify: true}))
	for _, tc := range []struct {
		name string
		b    []byte
		v    Verdict
	}{
		{"empty", nil, NeedMore},
		{"record type only", []byte{22}, NeedMore},
		{"header prefix", []byte{22, 3, 1, 0}, NeedMore},
		{"http", []byte("GET / HTTP/1.1\r\n"), NotMatch},
		{"ssh banner", []byte("SSH-2.0-OpenSSH_9.2\r\n"), NotMatch},
		{"alert record", []byte{21, 3, 3, 0, 2, 2, 40}, NotMatch},
		{"record version 2.0", []byte{22, 2, 0}, NotMatch},
		{"empty record", []byte{22, 3, 1, 0, 0}, NotMatch},
		{"record too long", []byte{22, 3, 1, 0x48, 0x01}, NotMatch},
		{"server hello", []byte{22, 3, 3, 0, 4, 2, 0, 0, 0}, NotMatch},
		{"sslv2 hello", []byte{0x80, 0x2e, 0x01, 0x03, 0x01}, NotMatch},
		// The second record is no handshake record while the ClientHello
		// still needs bytes.
		{"interleaved", append(recordsOf(hs[:40], 40), 23, 3, 3, 0, 1, 0), NotMatch},
		{"cut before the name", recordsOf(hs, 4000)[:5+60], NeedMore},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if host, v := TLSServerName(tc.b); v != tc.v || host != "" {
				t.Fatalf("%q, %v; want %v", host, v, tc.v)
			}
		})
	}
}

// The lengths inside a ClientHello are checked against their container.
func TestTLSLengthsLie(t *testing.T) {
	hs := handshakeOf(t, goClientHello(t, &tls.Config{ServerName: "lie.example", InsecureSkipVerify: true}))
	sidLen := 4 + 2 + 32
	bad := bytes.Clone(hs)
	bad[sidLen] = 33 // session_id longer than 32
	if _, v := TLSServerName(recordsOf(bad, 4000)); v != NotMatch {
		t.Fatalf("session id of 33 bytes: %v", v)
	}
	bad = bytes.Clone(hs)
	bad[1], bad[2], bad[3] = 0, 0, 40 // the message is shorter than its fields
	if _, v := TLSServerName(recordsOf(bad[:44], 4000)); v != NotMatch {
		t.Fatalf("fields past the message: %v", v)
	}
}

func TestTLSCurl(t *testing.T) {
	stream := curlFirstBytes(t, "curl.example.net", "https://curl.example.net:PORT/", func(b []byte) bool {
		_, v := TLSServerName(b)
		return v != NeedMore
	})
	host, v := TLSServerName(stream)
	if v != Found || host != "curl.example.net" {
		t.Fatalf("curl's ClientHello: %q, %v", host, v)
	}
	if got := oracleServerName(t, stream); got != "curl.example.net" {
		t.Fatalf("oracle: %q", got)
	}
	checkIncremental(t, TLSServerName, stream)
}

func TestNormalizeName(t *testing.T) {
	for in, want := range map[string]string{
		"Example.COM":           "example.com",
		"example.com.":          "example.com",
		"_srv.a-b.c":            "_srv.a-b.c",
		"a":                     "a",
		"xn--bcher-kva.example": "xn--bcher-kva.example",
		"":                      "",
		".":                     "",
		"a..b":                  "",
		".a":                    "",
		"1.2.3.4":               "",
		"1.2.3.4.":              "",
		"::1":                   "",
		"a b":                   "",
		"a/b":                   "",
		"ex\x00ample":           "",
		"ünicode.de":            "",
		"123":                   "",
		string(bytes.Repeat([]byte("a"), 64)) + ".com": "",
		string(bytes.Repeat([]byte("a."), 127)) + "a":  "",
	} {
		got, ok := normalizeName([]byte(in))
		if got != want || ok != (want != "") {
			t.Errorf("normalizeName(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}

// checkIncremental feeds f every prefix of b and checks the contract the
// router relies on: once a prefix gets a verdict other than NeedMore, every
// longer prefix gets the same verdict and name; a name found is valid.
func checkIncremental(t testing.TB, f func([]byte) (string, Verdict), b []byte) {
	t.Helper()
	decidedAt := -1
	var host string
	var v Verdict
	for i := 0; i <= len(b); i++ {
		h, vi := f(b[:i])
		if vi == Found {
			if n, ok := normalizeName([]byte(h)); !ok || n != h {
				t.Fatalf("prefix %d: found %q, not a normalised name", i, h)
			}
		} else if h != "" {
			t.Fatalf("prefix %d: %v with name %q", i, vi, h)
		}
		if decidedAt < 0 {
			if vi != NeedMore {
				decidedAt, host, v = i, h, vi
			}
			continue
		}
		if vi != v || h != host {
			t.Fatalf("prefix %d: %q, %v; prefix %d already said %q, %v", i, h, vi, decidedAt, host, v)
		}
	}
}

func equalFoldASCII(a, b string) bool { return bytes.EqualFold([]byte(a), []byte(b)) }
