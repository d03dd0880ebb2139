package sniff

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
)

// QUIC versions whose Initial packets can be read (RFC 9000, RFC 9369).
const (
	quicV1 = 0x00000001
	quicV2 = 0x6b3343cf
)

var (
	// RFC 9001 section 5.2.
	saltV1 = []byte{0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17,
		0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a}
	// RFC 9369 section 3.3.1.
	saltV2 = []byte{0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93,
		0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb, 0xf9, 0xbd, 0x2e, 0xd9}
)

const (
	// MaxQUICCrypto bounds the CRYPTO stream a QUICSniffer reassembles: a
	// ClientHello whose server_name lies further in is NoName.
	MaxQUICCrypto = 16 << 10
	// maxQUICRanges bounds the disjoint pieces of the CRYPTO stream held
	// while waiting for the gaps between them.
	maxQUICRanges = 64
	maxCIDLen     = 20
	sampleLen     = 16
)

// QUICSniffer reads the server_name of the ClientHello that a QUIC client
// sends in the CRYPTO frames of its Initial packets. Give it the flow's
// datagrams from the client, first one first; the ClientHello may span
// several Initial packets (of one or several datagrams) and its CRYPTO frames
// may come in any order. It decrypts the Initials with the keys every QUIC
// v1 and v2 endpoint can derive from the Destination Connection ID (RFC 9001
// section 5.2, RFC 9369 section 3.3): no secret is involved. The zero value
// is ready to use; it is not safe for concurrent use.
type QUICSniffer struct {
	verdict Verdict
	host    string
	started bool // an Initial packet was read

	crypto []byte // the CRYPTO stream so far, len = highest end seen
	ranges []span // the parts of crypto received, sorted, disjoint
	keys   *initialKeys
	nextPN uint64 // the largest packet number decrypted, plus 1
}

type span struct{ start, end int }

// Add reads one datagram the client sent and returns what the flow's
// Initials tell so far. NotMatch when the flow's first datagram holds no
// QUIC v1 or v2 Initial packet that decrypts, or the CRYPTO stream is not a
// ClientHello. Later datagrams without a readable Initial are passed over.
// Once the verdict is not NeedMore it stays.
func (q *QUICSniffer) Add(datagram []byte) (string, Verdict) {
	if q.verdict != NeedMore {
		return q.host, q.verdict
	}
	read := q.datagram(datagram)
	switch {
	case !read && !q.started:
		q.verdict = NotMatch
		return "", NotMatch
	case !read:
		return "", NeedMore
	}
	q.started = true
	if len(q.ranges) == 0 || q.ranges[0].start != 0 {
		return "", NeedMore
	}
	host, v := clientHelloServerName(q.crypto[:q.ranges[0].end])
	if v == NeedMore && q.ranges[0].end >= MaxQUICCrypto {
		v = NoName
	}
	q.verdict, q.host = v, host
	return host, v
}

// QUICServerName is a QUICSniffer given datagrams in order.
func QUICServerName(datagrams ...[]byte) (string, Verdict) {
	var q QUICSniffer
	host, v := "", NeedMore
	for _, d := range datagrams {
		if host, v = q.Add(d); v != NeedMore {
			break
		}
	}
	return host, v
}

var errNotInitial = errors.New("sniff: not a QUIC Initial packet")

// datagram reads the coalesced packets of one datagram and reports whether
// at least one Initial packet was decrypted. Packets after the first that
// are not Initials are skipped.
func (q *QUICSniffer) datagram(b []byte) (read bool) {
	for first := true; len(b) > 0; first = false {
		rest, err := q.packet(b)
		switch {
		case err == nil:
			read = true
		case first || !errors.Is(err, errNotInitial):
			return read
		}
		b = rest
	}
	return read
}

// packet reads one long-header packet at the start of b and returns the
// bytes after it. Packets other than Initials are skipped
// (errNotInitial); a short-header packet ends the datagram.
func (q *QUICSniffer) packet(b []byte) (rest []byte, err error) {
	if len(b) < 7 || b[0]&0x80 == 0 {
		return nil, errNotInitial
	}
	version := binary.BigEndian.Uint32(b[1:5])
	typ := (b[0] >> 4) & 3
	var initialType byte
	switch version {
	case quicV1:
		initialType = 0
	case quicV2:
		initialType = 1
	default:
		return nil, errNotInitial
	}
	p := quicParser{b: b, pos: 5}
	dcid, err := p.cid()
	if err != nil {
		return nil, err
	}
	if _, err := p.cid(); err != nil { // source connection ID
		return nil, err
	}
	if typ != initialType {
		// 0-RTT and Handshake packets carry a Length too; a Retry (a
		// server's packet) does not and ends the walk.
		retry := byte(3)
		if version == quicV2 {
			retry = 0
		}
		if typ == retry {
			return nil, errNotInitial
		}
		n, err := p.varint()
		if err != nil || n > uint64(len(b)-p.pos) {
			return nil, errBad
		}
		return b[p.pos+int(n):], errNotInitial
	}
	tokenLen, err := p.varint()
	if err != nil || tokenLen > uint64(len(b)-p.pos) {
		return nil, errBad
	}
	p.pos += int(tokenLen)
	length, err := p.varint()
	if err != nil || length > uint64(len(b)-p.pos) {
		return nil, errBad
	}
	pnOff := p.pos
	end := pnOff + int(length)
	if pnOff+4+sampleLen > end {
		return nil, errBad
	}
	keys, err := q.keysFor(version, dcid)
	if err != nil {
		return nil, err
	}
	var mask [aes.BlockSize]byte
	keys.hp.Encrypt(mask[:], b[pnOff+4:pnOff+4+sampleLen])
	first := b[0] ^ mask[0]&0x0f
	if first&0x0c != 0 {
		return nil, errBad // reserved bits must be 0 (RFC 9000 section 17.2)
	}
	pnLen := int(first&3) + 1
	header := make([]byte, pnOff+pnLen)
	copy(header, b[:pnOff+pnLen])
	header[0] = first
	var truncated uint64
	for i := range pnLen {
		header[pnOff+i] ^= mask[1+i]
		truncated = truncated<<8 | uint64(header[pnOff+i])
	}
	pn := decodePacketNumber(q.nextPN, truncated, pnLen)
	var nonce [12]byte
	copy(nonce[:], keys.iv[:])
	for i := range 8 {
		nonce[4+i] ^= byte(pn >> (56 - 8*i))
	}
	plain, err := keys.aead.Open(nil, nonce[:], b[pnOff+pnLen:end], header)
	if err != nil {
		return nil, errBad
	}
	if err := q.frames(plain); err != nil {
		return nil, err
	}
	q.nextPN = max(q.nextPN, pn+1)
	return b[end:], nil
}

// frames reads the frames of an Initial packet's payload, keeping CRYPTO
// data. Only the frames RFC 9000 section 12.4 allows in Initials are read.
func (q *QUICSniffer) frames(b []byte) error {
	p := quicParser{b: b}
	for p.pos < len(b) {
		typ, err := p.varint()
		if err != nil {
			return err
		}
		switch typ {
		case 0x00, 0x01: // PADDING, PING
		case 0x02, 0x03: // ACK, ACK with ECN counts
			if err := p.skipVarints(2); err != nil { // largest acknowledged, delay
				return err
			}
			count, err := p.varint()
			if err != nil {
				return err
			}
			if count > uint64(len(b)) {
				return errBad
			}
			// The first range, then a gap and a length per further range.
			if err := p.skipVarints(1 + 2*int(count)); err != nil {
				return err
			}
			if typ == 0x03 {
				if err := p.skipVarints(3); err != nil { // ECT0, ECT1, ECN-CE
					return err
				}
			}
		case 0x06: // CRYPTO
			off, err := p.varint()
			if err != nil {
				return err
			}
			n, err := p.varint()
			if err != nil || n > uint64(len(b)-p.pos) {
				return errBad
			}
			q.addCrypto(off, b[p.pos:p.pos+int(n)])
			p.pos += int(n)
		case 0x1c: // CONNECTION_CLOSE
			if err := p.skipVarints(2); err != nil {
				return err
			}
			n, err := p.varint()
			if err != nil || n > uint64(len(b)-p.pos) {
				return errBad
			}
			p.pos += int(n)
		default:
			return errBad
		}
	}
	return nil
}

// addCrypto stores CRYPTO data at off, within MaxQUICCrypto and as long as
// the stream is in at most maxQUICRanges pieces.
func (q *QUICSniffer) addCrypto(off uint64, data []byte) {
	if off >= MaxQUICCrypto || len(data) == 0 {
		return
	}
	start := int(off)
	end := min(start+len(data), MaxQUICCrypto)
	data = data[:end-start]
	// Merge [start, end) into the sorted, disjoint ranges.
	i := 0
	for i < len(q.ranges) && q.ranges[i].end < start {
		i++
	}
	j := i
	merged := span{start, end}
	for j < len(q.ranges) && q.ranges[j].start <= end {
		merged.start = min(merged.start, q.ranges[j].start)
		merged.end = max(merged.end, q.ranges[j].end)
		j++
	}
	if j == i && len(q.ranges) >= maxQUICRanges {
		return
	}
	if end > len(q.crypto) {
		q.crypto = append(q.crypto, make([]byte, end-len(q.crypto))...)
	}
	copy(q.crypto[start:end], data)
	q.ranges = append(q.ranges[:i], append([]span{merged}, q.ranges[j:]...)...)
}

// initialKeys protect the client's Initial packets of one connection ID.
type initialKeys struct {
	version uint32
	dcid    []byte
	aead    cipher.AEAD
	iv      [12]byte
	hp      cipher.Block
}

func (q *QUICSniffer) keysFor(version uint32, dcid []byte) (*initialKeys, error) {
	if k := q.keys; k != nil && k.version == version && bytes.Equal(k.dcid, dcid) {
		return k, nil
	}
	k, err := deriveInitialKeys(version, dcid)
	if err != nil {
		return nil, err
	}
	q.keys = k
	return k, nil
}

// deriveInitialKeys computes the client's Initial packet protection keys
// (RFC 9001 section 5.2; RFC 9369 section 3.3 for v2's salt and labels).
func deriveInitialKeys(version uint32, dcid []byte) (*initialKeys, error) {
	salt, keyLabel, ivLabel, hpLabel := saltV1, "quic key", "quic iv", "quic hp"
	if version == quicV2 {
		salt, keyLabel, ivLabel, hpLabel = saltV2, "quicv2 key", "quicv2 iv", "quicv2 hp"
	}
	initial, err := hkdf.Extract(sha256.New, dcid, salt)
	if err != nil {
		return nil, err
	}
	client, err := expandLabel(initial, "client in", sha256.Size)
	if err != nil {
		return nil, err
	}
	key, err := expandLabel(client, keyLabel, 16)
	if err != nil {
		return nil, err
	}
	iv, err := expandLabel(client, ivLabel, 12)
	if err != nil {
		return nil, err
	}
	hpKey, err := expandLabel(client, hpLabel, 16)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	hp, err := aes.NewCipher(hpKey)
	if err != nil {
		return nil, err
	}
	k := &initialKeys{version: version, dcid: bytes.Clone(dcid), aead: aead, hp: hp}
	copy(k.iv[:], iv)
	return k, nil
}

// expandLabel is TLS 1.3's HKDF-Expand-Label with an empty context (RFC 8446
// section 7.1).
func expandLabel(secret []byte, label string, length int) ([]byte, error) {
	full := "tls13 " + label
	info := make([]byte, 0, 4+len(full))
	info = binary.BigEndian.AppendUint16(info, uint16(length))
	info = append(info, byte(len(full)))
	info = append(info, full...)
	info = append(info, 0)
	return hkdf.Expand(sha256.New, secret, string(info), length)
}

// decodePacketNumber recovers a full packet number from its truncated
// encoding (RFC 9000 appendix A.3).
// expected is the largest packet number seen plus 1.
func decodePacketNumber(expected, truncated uint64, pnLen int) uint64 {
	win := uint64(1) << (8 * pnLen)
	hwin := win / 2
	candidate := expected&^(win-1) | truncated
	switch {
	case candidate+hwin <= expected && candidate < 1<<62-win:
		return candidate + win
	case candidate > expected+hwin && candidate >= win:
		return candidate - win
	}
	return candidate
}

// quicParser reads QUIC fields from b[pos:].
type quicParser struct {
	b   []byte
	pos int
}

func (p *quicParser) cid() ([]byte, error) {
	if p.pos >= len(p.b) {
		return nil, errBad
	}
	n := int(p.b[p.pos])
	p.pos++
	if n > maxCIDLen || n > len(p.b)-p.pos {
		return nil, errBad
	}
	c := p.b[p.pos : p.pos+n]
	p.pos += n
	return c, nil
}

// varint reads a variable-length integer (RFC 9000 section 16).
func (p *quicParser) varint() (uint64, error) {
	if p.pos >= len(p.b) {
		return 0, errBad
	}
	n := 1 << (p.b[p.pos] >> 6)
	if n > len(p.b)-p.pos {
		return 0, errBad
	}
	v := uint64(p.b[p.pos] & 0x3f)
	for _, c := range p.b[p.pos+1 : p.pos+n] {
		v = v<<8 | uint64(c)
	}
	p.pos += n
	return v, nil
}

func (p *quicParser) skipVarints(n int) error {
	for range n {
		if _, err := p.varint(); err != nil {
			return err
		}
	}
	return nil
}
