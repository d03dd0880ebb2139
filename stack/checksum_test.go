package stack

import (
	"testing"
)

// TestChecksumsOK: good packets pass, a flipped bit fails, what cannot be
// judged passes.
func TestChecksumsOK(t *testing.T) {
	tcp4 := tcpSeg(t, mustAP("10.0.0.2:5000"), mustAP("198.18.0.1:80"), 1, 0, true, false, false, false, "hello")
	tcp6 := tcpSeg(t, mustAP("[fd00::2]:5000"), mustAP("[2001:db8::1]:80"), 1, 0, false, true, false, false, "hello")
	for name, pkt := range map[string][]byte{"tcp4": tcp4, "tcp6": tcp6} {
		if !checksumsOK(pkt) {
			t.Errorf("%s: a good packet failed", name)
		}
		bad := append([]byte(nil), pkt...)
		bad[len(bad)-1] ^= 0x40
		if checksumsOK(bad) {
			t.Errorf("%s: a corrupted payload passed", name)
		}
	}
	badIP := append([]byte(nil), tcp4...)
	badIP[8]-- // TTL, without fixing the header checksum
	if checksumsOK(badIP) {
		t.Error("a bad IPv4 header checksum passed")
	}
	frag := append([]byte(nil), tcp4...)
	frag[6] |= 0x20 // more fragments: the transport checksum covers what is not here
	frag[len(frag)-1] ^= 0x40
	frag[10], frag[11] = 0, 0
	sum := ^checksumOf(frag[:20])
	frag[10], frag[11] = byte(sum>>8), byte(sum)
	if !checksumsOK(frag) {
		t.Error("a fragment was judged by its transport checksum")
	}
	for name, pkt := range map[string][]byte{"empty": nil, "short": {0x45, 0}, "not IP": {0x10, 1, 2, 3}} {
		if !checksumsOK(pkt) {
			t.Errorf("%s: dropped; gVisor judges malformed packets", name)
		}
	}
}

// BenchmarkChecksumsOK is the cost the read loop pays per packet the device
// did not vouch for: a 1500-byte TCP segment.
// Run: go test -run '^$' -bench ChecksumsOK ./stack/
func BenchmarkChecksumsOK(b *testing.B) {
	pkt := tcpSeg(b, mustAP("10.0.0.2:5000"), mustAP("198.18.0.1:80"), 1, 0, false, true, false, false, string(make([]byte, 1460)))
	b.SetBytes(int64(len(pkt)))
	for range b.N {
		if !checksumsOK(pkt) {
			b.Fatal("bad")
		}
	}
}
