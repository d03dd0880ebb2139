package socks

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
)

// Each decoder must never panic, must consume no more than the message, and
// whatever it accepts must encode back to the bytes it read, up to the
// normalisations the encoder makes on purpose (canonicalAddr).

// canonicalAddr returns msg, whose SOCKS5 address (from the ATYP byte) starts
// at off, as the encoder writes it: an IPv4-mapped IPv6 address (ATYP 4,
// ::ffff:a.b.c.d) is decoded as the IPv4 address it is and so written back
// as ATYP 1. Anything else is returned as it is.
func canonicalAddr(msg []byte, off int) []byte {
	if len(msg) < off+1+16 || msg[off] != 4 {
		return msg
	}
	ip := netip.AddrFrom16([16]byte(msg[off+1 : off+17]))
	if !ip.Is4In6() {
		return msg
	}
	v4 := ip.Unmap().As4()
	out := append([]byte(nil), msg[:off]...)
	out = append(out, 1)
	out = append(out, v4[:]...)
	return append(out, msg[off+17:]...)
}

func FuzzReadAddr(f *testing.F) {
	f.Add(hexb("01 7f 00 00 01 00 50"))
	f.Add(hexb("03 03 61 62 63 01 bb"))
	f.Add(hexb("04 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 00 35"))
	f.Add(hexb("09"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		a, err := ReadAddr(r)
		a2, n, err2 := DecodeAddr(b)
		if (err == nil) != (err2 == nil) {
			t.Fatalf("ReadAddr err=%v, DecodeAddr err=%v", err, err2)
		}
		if err != nil {
			return
		}
		if a != a2 || n != len(b)-r.Len() {
			t.Fatalf("ReadAddr %v (%d bytes) vs DecodeAddr %v (%d bytes)", a, len(b)-r.Len(), a2, n)
		}
		enc, err := AppendAddr(nil, a)
		if err != nil {
			t.Fatalf("decoded %v does not encode: %v", a, err)
		}
		a3, _, err := DecodeAddr(enc)
		if err != nil || a3 != a {
			t.Fatalf("round trip %v -> % x -> %v, %v", a, enc, a3, err)
		}
	})
}

func FuzzReadGreeting(f *testing.F) {
	f.Add(hexb("05 01 00"))
	f.Add(hexb("05 02 00 02"))
	f.Add(hexb("05 00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		ms, err := ReadGreeting(r)
		if err != nil {
			return
		}
		enc, err := AppendGreeting(nil, ms...)
		if err != nil || !bytes.Equal(enc, b[:len(b)-r.Len()]) {
			t.Fatalf("round trip: % x -> % x, %v", b[:len(b)-r.Len()], enc, err)
		}
	})
}

func FuzzReadRequest(f *testing.F) {
	f.Add(hexb("05 01 00 01 7f 00 00 01 00 50"))
	f.Add(hexb("05 03 00 03 01 61 00 00"))
	f.Add(hexb("05 07 00 01 7f 00 00 01 00 50"))
	f.Add(hexb("05 01 00 04 00 00 00 00 00 00 00 00 00 00 ff ff 7f 00 00 01 00 50")) // ::ffff:127.0.0.1
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		req, err := ReadRequest(r)
		if errors.Is(err, ErrCommand) && ReplyForError(err) != CommandNotSupported {
			t.Fatal("unknown command does not map to 0x07")
		}
		if errors.Is(err, ErrAddressType) && ReplyForError(err) != AddressTypeNotSupported {
			t.Fatal("unknown ATYP does not map to 0x08")
		}
		if err != nil {
			return
		}
		read := b[:len(b)-r.Len()]
		enc, err := AppendRequest(nil, req)
		if err != nil {
			t.Fatal(err)
		}
		// RSV is ignored on read and written as zero.
		want := append([]byte(nil), read...)
		want[2] = 0
		want = canonicalAddr(want, 3)
		if !bytes.Equal(enc, want) {
			t.Fatalf("round trip: % x -> % x", read, enc)
		}
	})
}

func FuzzReadRequest4(f *testing.F) {
	f.Add(hexb("04 01 00 50 42 66 07 63 66 72 65 64 00"))
	f.Add(hexb("04 02 00 15 00 00 00 01 00 61 2e 69 6f 00"))
	f.Add(hexb("04 01 00 50 00 00 00 01 00 00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		req, err := ReadRequest4(r)
		if err != nil {
			return
		}
		read := b[:len(b)-r.Len()]
		enc, err := AppendRequest4(nil, req)
		if err != nil {
			t.Fatal(err)
		}
		if req.Addr.Name != "" {
			// SOCKS4a: any 0.0.0.x (x != 0) is accepted; we write 0.0.0.1.
			read = append([]byte(nil), read...)
			read[7] = 1
		}
		if !bytes.Equal(enc, read) {
			t.Fatalf("round trip: % x -> % x", read, enc)
		}
	})
}

func FuzzReadUserPass(f *testing.F) {
	f.Add(hexb("01 01 61 01 62"))
	f.Add(hexb("01 00 00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		u, p, err := ReadUserPass(r)
		if err != nil || u == "" || p == "" {
			return
		}
		enc, err := AppendUserPass(nil, u, p)
		if err != nil || !bytes.Equal(enc, b[:len(b)-r.Len()]) {
			t.Fatalf("round trip: % x -> % x, %v", b[:len(b)-r.Len()], enc, err)
		}
	})
}

func FuzzReadReply(f *testing.F) {
	f.Add(hexb("05 00 00 01 7f 00 00 01 04 38"))
	f.Add(hexb("00 5a 00 50 7f 00 00 01"))
	f.Add(hexb("05 00 00 04 00 00 00 00 00 00 00 00 00 00 ff ff 0a 00 00 01 04 38")) // ::ffff:10.0.0.1
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		if rep, addr, err := ReadReply(r); err == nil {
			read := b[:len(b)-r.Len()]
			enc, err := AppendReply(nil, rep, addr)
			// VER and RSV are not kept; REP and the address must be.
			if want := canonicalAddr(read, 3); err != nil || enc[1] != read[1] || !bytes.Equal(enc[3:], want[3:]) {
				t.Fatalf("reply round trip: % x -> % x, %v", read, enc, err)
			}
		}
		if code, ap, err := ReadReply4(bytes.NewReader(b)); err == nil {
			if enc := AppendReply4(nil, code, ap); !bytes.Equal(enc[1:], b[1:8]) {
				t.Fatalf("reply4 round trip: % x -> % x", b[:8], enc)
			}
		}
	})
}

func FuzzParseUDP(f *testing.F) {
	f.Add(hexb("00 00 00 01 7f 00 00 01 00 35 68 69"))
	f.Add(hexb("00 00 81 03 01 61 00 07 78"))
	f.Add(hexb("00 00 02 03 01 61 00 07 78 00 00 82 03 01 61 00 07 79"))
	f.Fuzz(func(t *testing.T, b []byte) {
		// Treat the input as a run of datagrams, each ending at a 0xff byte, and
		// feed them to one reassembler: it must never panic nor return more
		// than MaxSize bytes.
		r := Reassembler{MaxSize: 64}
		for _, d := range bytes.SplitAfter(b, []byte{0xff}) {
			frag, addr, p, err := ParseUDP(d)
			if err != nil {
				continue
			}
			enc, err := AppendUDPHeader(nil, frag, addr)
			if err != nil || !bytes.Equal(enc, d[:len(d)-len(p)]) {
				t.Fatalf("header round trip: % x -> % x, %v", d[:len(d)-len(p)], enc, err)
			}
			if full, _, ok := r.Add(frag, addr, p); ok && frag != 0 && len(full) > 64 {
				t.Fatalf("reassembled %d bytes past the cap", len(full))
			}
		}
	})
}
