package sniff

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"testing"

	"github.com/quic-go/quic-go"
)

// RFC 9001 appendix A.1 and A.2, RFC 9369 appendix A.1 and A.2: the keys of
// the client's Initial for Destination Connection ID 8394c8f03e515708, and
// the header protection mask of the sample in the example packet.
func TestQUICInitialKeysRFCVectors(t *testing.T) {
	dcid := unhex(t, "8394c8f03e515708")
	for _, tc := range []struct {
		name            string
		version         uint32
		key, iv, sample string
		mask            string
	}{
		{"v1", quicV1, "1f369613dd76d5467730efcbe3b1a22d", "fa044b2f42a3fd3b46fb255c",
			"d1b1c98dd7689fb8ec11d242b123dc9b", "437b9aec36"},
		{"v2", quicV2, "8b1a0bc121284290a29e0971b5cd045d", "91f73e2351d8fa91660e909f",
			"ffe67b6abcdb4298b485dd04de806071", "94a0c95e80"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := deriveInitialKeys(tc.version, dcid)
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(k.iv[:]); got != tc.iv {
				t.Errorf("iv %s, want %s", got, tc.iv)
			}
			// The AEAD key is checked through a seal with the RFC's key.
			block, err := aes.NewCipher(unhex(t, tc.key))
			if err != nil {
				t.Fatal(err)
			}
			ref, err := cipher.NewGCM(block)
			if err != nil {
				t.Fatal(err)
			}
			nonce, msg := make([]byte, 12), []byte("plaintext")
			if !bytes.Equal(ref.Seal(nil, nonce, msg, nil), k.aead.Seal(nil, nonce, msg, nil)) {
				t.Errorf("AEAD key differs from the RFC's %s", tc.key)
			}
			var mask [16]byte
			k.hp.Encrypt(mask[:], unhex(t, tc.sample))
			if got := hex.EncodeToString(mask[:5]); got != tc.mask {
				t.Errorf("header protection mask %s, want %s", got, tc.mask)
			}
		})
	}
}

// RFC 9000 appendix A.3's example.
func TestDecodePacketNumber(t *testing.T) {
	if got := decodePacketNumber(0xa82f30ea+1, 0x9b32, 2); got != 0xa82f9b32 {
		t.Fatalf("got %#x, want 0xa82f9b32", got)
	}
	if got := decodePacketNumber(0, 0, 1); got != 0 {
		t.Fatalf("first packet: %d", got)
	}
	if got := decodePacketNumber(255, 1, 1); got != 257 {
		t.Fatalf("after 254: %d, want 257", got)
	}
}

func TestQUICGoClient(t *testing.T) {
	for _, tc := range []struct {
		name    string
		version quic.Version
	}{
		{"v1", quic.Version1},
		{"v2", quic.Version2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var q QUICSniffer
			var host string
			v := NeedMore
			dgrams := quicInitials(t, "quic.example.com", tc.version, func(d [][]byte) bool {
				if len(d) > 0 {
					host, v = q.Add(d[len(d)-1])
				}
				return v != NeedMore
			})
			if v != Found || host != "quic.example.com" {
				t.Fatalf("after %d datagrams: %q, %v", len(dgrams), host, v)
			}
			if h, v := QUICServerName(dgrams...); v != Found || h != host {
				t.Fatalf("QUICServerName: %q, %v", h, v)
			}
			t.Logf("quic-go %v: name found in datagram %d of %d bytes", tc.version, len(dgrams), len(dgrams[len(dgrams)-1]))
			// The captured datagrams are not changed by reading them.
			again := quicCopy(dgrams)
			QUICServerName(dgrams...)
			for i := range dgrams {
				if !bytes.Equal(again[i], dgrams[i]) {
					t.Fatal("the sniffer wrote into a datagram")
				}
			}
		})
	}
}

// A ClientHello in CRYPTO frames out of order, across three Initial
// packets in two datagrams, the second datagram coalescing an Initial with a
// 0-RTT packet.
func TestQUICReassembly(t *testing.T) {
	hs := handshakeOf(t, goClientHello(t, &tls.Config{ServerName: "pieces.example", InsecureSkipVerify: true}))
	dcid := unhex(t, "0102030405060708")
	a, b, c := len(hs)/3, 2*len(hs)/3, len(hs)
	p0 := sealInitial(t, quicV1, dcid, 0, 1, pad(cryptoFrame(b, hs[b:c]), 20))
	p1 := sealInitial(t, quicV1, dcid, 1, 2, pad(cryptoFrame(a, hs[a:b]), 20))
	p2 := sealInitial(t, quicV1, dcid, 2, 4, append(append([]byte{0x01}, ackFrame()...), cryptoFrame(0, hs[:a])...))
	zeroRTT := longHeader(0xd0, quicV1, dcid, 40)
	dgram2 := append(append(append([]byte{}, p1...), p2...), zeroRTT...)

	var q QUICSniffer
	if host, v := q.Add(p0); v != NeedMore || host != "" {
		t.Fatalf("first piece: %q, %v", host, v)
	}
	if host, v := q.Add([]byte("not quic at all")); v != NeedMore || host != "" {
		t.Fatalf("a later stray datagram: %q, %v", host, v)
	}
	if host, v := q.Add(dgram2); v != Found || host != "pieces.example" {
		t.Fatalf("after all pieces: %q, %v", host, v)
	}
	// The verdict stays.
	if host, v := q.Add([]byte{0}); v != Found || host != "pieces.example" {
		t.Fatalf("verdict changed: %q, %v", host, v)
	}

	// QUIC v2 with the same pieces, and a Retry-style new DCID for the
	// last packet (its keys come from its own DCID).
	q = QUICSniffer{}
	q.Add(sealInitial(t, quicV2, dcid, 0, 1, pad(cryptoFrame(a, hs[a:]), 20)))
	if host, v := q.Add(sealInitial(t, quicV2, unhex(t, "aabbccddeeff0011"), 1, 1, cryptoFrame(0, hs[:a]))); v != Found || host != "pieces.example" {
		t.Fatalf("v2: %q, %v", host, v)
	}
}

func TestQUICNotMatch(t *testing.T) {
	hs := handshakeOf(t, goClientHello(t, &tls.Config{ServerName: "n.example", InsecureSkipVerify: true}))
	dcid := unhex(t, "1112131415161718")
	good := sealInitial(t, quicV1, dcid, 0, 1, cryptoFrame(0, hs))
	tampered := bytes.Clone(good)
	tampered[len(tampered)-1] ^= 1
	wrongDCID := bytes.Clone(good)
	wrongDCID[6] ^= 1
	unknownVersion := bytes.Clone(good)
	binary.BigEndian.PutUint32(unknownVersion[1:], 0xff00001d) // draft-29
	v2TypeBits := bytes.Clone(good)
	binary.BigEndian.PutUint32(v2TypeBits[1:], quicV2) // v1's Initial type is v2's Retry
	for _, tc := range []struct {
		name string
		d    []byte
		v    Verdict
	}{
		{"dns query", unhex(t, "123401000001000000000000076578616d706c6503636f6d0000010001"), NotMatch},
		{"short header", append([]byte{0x40}, good[1:]...), NotMatch},
		{"version negotiation", append([]byte{0x80, 0, 0, 0, 0}, good[5:]...), NotMatch},
		{"unknown version", unknownVersion, NotMatch},
		{"v2 type bits", v2TypeBits, NotMatch},
		{"tampered payload", tampered, NotMatch},
		{"other DCID", wrongDCID, NotMatch},
		{"truncated", good[:len(good)-1], NotMatch},
		{"handshake packet first", longHeader(0xe0, quicV1, dcid, 30), NotMatch},
		{"empty", nil, NotMatch},
		{"not a ClientHello", sealInitial(t, quicV1, dcid, 0, 1, cryptoFrame(0, []byte{2, 0, 0, 4, 3, 3, 0, 0})), NotMatch},
		{"unknown frame", sealInitial(t, quicV1, dcid, 0, 1, append([]byte{0x08}, cryptoFrame(0, hs)...)), NotMatch},
		{"no server name", sealInitial(t, quicV1, dcid, 0, 1, cryptoFrame(0, handshakeOf(t, goClientHello(t, &tls.Config{InsecureSkipVerify: true})))), NoName},
		{"good", good, Found},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var q QUICSniffer
			if host, v := q.Add(tc.d); v != tc.v || (v != Found && host != "") {
				t.Fatalf("%q, %v; want %v", host, v, tc.v)
			}
		})
	}
}

// The CRYPTO stream is kept within MaxQUICCrypto, and within maxQUICRanges
// pieces: a name further in is given up (NoName), not waited for.
func TestQUICBounds(t *testing.T) {
	dcid := unhex(t, "2122232425262728")
	var q QUICSniffer
	q.Add(sealInitial(t, quicV1, dcid, 0, 1, cryptoFrame(0, []byte{1, 0, 0xff, 0xff})))
	if len(q.crypto) > 4 {
		t.Fatalf("held %d bytes", len(q.crypto))
	}
	q.Add(sealInitial(t, quicV1, dcid, 1, 1, cryptoFrame(MaxQUICCrypto, []byte("past the bound"))))
	if len(q.crypto) > 4 {
		t.Fatalf("stored data past MaxQUICCrypto: %d bytes", len(q.crypto))
	}
	for i := range 2 * maxQUICRanges {
		q.Add(sealInitial(t, quicV1, dcid, uint64(2+i), 2, cryptoFrame(100+10*i, []byte{1})))
	}
	if len(q.ranges) > maxQUICRanges {
		t.Fatalf("%d ranges held", len(q.ranges))
	}
	// A ClientHello whose server_name comes after a padding extension
	// longer than the bound: the sniffer gives up when the contiguous
	// stream reaches the bound.
	q = QUICSniffer{}
	hs := withPadding(t, handshakeOf(t, goClientHello(t, &tls.Config{ServerName: "far.example", InsecureSkipVerify: true})), MaxQUICCrypto)
	v := NeedMore
	pn := uint64(0)
	for off := 0; off < len(hs) && v == NeedMore; off += 1000 {
		_, v = q.Add(sealInitial(t, quicV1, dcid, pn, 2, cryptoFrame(off, hs[off:min(off+1000, len(hs))])))
		pn++
	}
	if v != NoName {
		t.Fatalf("at the bound: %v", v)
	}
	// The same ClientHello over TCP has no such bound (the caller has one).
	if got := oracleServerName(t, recordsOf(hs, maxRecordLen)); got != "far.example" {
		t.Fatalf("crypto/tls's server sees %q in the padded ClientHello", got)
	}
	if host, v := TLSServerName(recordsOf(hs, maxRecordLen)); v != Found || host != "far.example" {
		t.Fatalf("over TLS records: %q, %v", host, v)
	}
}

// withPadding puts a padding extension (RFC 7685) of n bytes first in the
// ClientHello hs, so every other extension comes after it.
func withPadding(t testing.TB, hs []byte, n int) []byte {
	t.Helper()
	p := 4 + 2 + 32
	p += 1 + int(hs[p])
	p += 2 + int(binary.BigEndian.Uint16(hs[p:]))
	p += 1 + int(hs[p])
	extLen := int(binary.BigEndian.Uint16(hs[p:]))
	if p+2+extLen != len(hs) || extLen+4+n > 0xffff {
		t.Fatalf("cannot pad: extensions at %d of %d bytes, message %d", p, extLen, len(hs))
	}
	out := bytes.Clone(hs[:p])
	out = binary.BigEndian.AppendUint16(out, uint16(extLen+4+n))
	out = append(out, 0, 21, byte(n>>8), byte(n))
	out = append(out, make([]byte, n)...)
	out = append(out, hs[p+2:]...)
	body := len(out) - 4
	out[1], out[2], out[3] = byte(body>>16), byte(body>>8), byte(body)
	return out
}

func TestAddCryptoMerges(t *testing.T) {
	var q QUICSniffer
	q.addCrypto(10, []byte("klmno"))
	q.addCrypto(0, []byte("abc"))
	q.addCrypto(20, []byte("uv"))
	q.addCrypto(2, []byte("cdefghijk"))
	if len(q.ranges) != 2 || q.ranges[0] != (span{0, 15}) || q.ranges[1] != (span{20, 22}) {
		t.Fatalf("ranges %v", q.ranges)
	}
	if got := string(q.crypto[:15]); got != "abcdefghijklmno" {
		t.Fatalf("stream %q", got)
	}
	q.addCrypto(14, []byte("opqrst"))
	if len(q.ranges) != 1 || q.ranges[0] != (span{0, 22}) {
		t.Fatalf("ranges %v", q.ranges)
	}
}

// sealInitial builds a client Initial packet of version with dcid, packet
// number pn in pnLen bytes, and the plaintext frames payload, protected the
// way RFC 9001 section 5 says. Test-only; the quic-go captures check the
// same derivation independently.
func sealInitial(t testing.TB, version uint32, dcid []byte, pn uint64, pnLen int, payload []byte) []byte {
	t.Helper()
	k, err := deriveInitialKeys(version, dcid)
	if err != nil {
		t.Fatal(err)
	}
	if pnLen+len(payload) < 4 {
		payload = pad(payload, 4)
	}
	typ := byte(0)
	if version == quicV2 {
		typ = 1
	}
	h := []byte{0xc0 | typ<<4 | byte(pnLen-1)}
	h = binary.BigEndian.AppendUint32(h, version)
	h = append(h, byte(len(dcid)))
	h = append(h, dcid...)
	h = append(h, 3, 's', 'c', 'i', 0) // SCID, token length 0
	length := pnLen + len(payload) + 16
	h = append(h, 0x40|byte(length>>8), byte(length))
	pnOff := len(h)
	for i := pnLen - 1; i >= 0; i-- {
		h = append(h, byte(pn>>(8*i)))
	}
	var nonce [12]byte
	copy(nonce[:], k.iv[:])
	for i := range 8 {
		nonce[4+i] ^= byte(pn >> (56 - 8*i))
	}
	pkt := k.aead.Seal(h, nonce[:], payload, h)
	var mask [16]byte
	k.hp.Encrypt(mask[:], pkt[pnOff+4:pnOff+20])
	pkt[0] ^= mask[0] & 0x0f
	for i := range pnLen {
		pkt[pnOff+i] ^= mask[1+i]
	}
	return pkt
}

// longHeader is a long-header packet of another type (0-RTT, Handshake)
// with n bytes of opaque payload.
func longHeader(first byte, version uint32, dcid []byte, n int) []byte {
	h := []byte{first}
	h = binary.BigEndian.AppendUint32(h, version)
	h = append(h, byte(len(dcid)))
	h = append(h, dcid...)
	h = append(h, 0, 0x40|byte(n>>8), byte(n))
	return append(h, make([]byte, n)...)
}

func cryptoFrame(off int, data []byte) []byte {
	f := []byte{0x06}
	f = appendVarint(f, uint64(off))
	f = appendVarint(f, uint64(len(data)))
	return append(f, data...)
}

// ackFrame acknowledges packets 0..2 and 5, with ECN counts.
func ackFrame() []byte { return []byte{0x03, 5, 0, 1, 0, 1, 2, 0, 0, 0} }

func pad(b []byte, n int) []byte {
	for len(b) < n {
		b = append(b, 0)
	}
	return b
}

func appendVarint(b []byte, v uint64) []byte {
	switch {
	case v < 1<<6:
		return append(b, byte(v))
	case v < 1<<14:
		return append(b, 0x40|byte(v>>8), byte(v))
	case v < 1<<30:
		return binary.BigEndian.AppendUint32(b, 0x80<<24|uint32(v))
	}
	return binary.BigEndian.AppendUint64(b, 0xc0<<56|v)
}

func quicCopy(d [][]byte) [][]byte {
	out := make([][]byte, len(d))
	for i := range d {
		out[i] = bytes.Clone(d[i])
	}
	return out
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
