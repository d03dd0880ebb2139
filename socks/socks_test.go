package socks

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"testing/iotest"
	"time"
)

func hexb(s string) []byte {
	var out []byte
	for _, f := range strings.Fields(s) {
		var b byte
		for _, c := range f {
			b <<= 4
			switch {
			case c >= '0' && c <= '9':
				b |= byte(c - '0')
			case c >= 'a' && c <= 'f':
				b |= byte(c-'a') + 10
			default:
				panic("bad hex " + f)
			}
		}
		out = append(out, b)
	}
	return out
}

func TestParseAddr(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Addr
		err  string
	}{
		{in: "1.2.3.4:80", want: Addr{IP: netip.MustParseAddr("1.2.3.4"), Port: 80}},
		{in: "[::1]:443", want: Addr{IP: netip.MustParseAddr("::1"), Port: 443}},
		{in: "[::ffff:1.2.3.4]:1", want: Addr{IP: netip.MustParseAddr("1.2.3.4"), Port: 1}},
		{in: "example.com:65535", want: Addr{Name: "example.com", Port: 65535}},
		{in: "example.com", err: "missing port"},
		{in: "example.com:65536", err: "0 to 65535"},
		{in: ":80", err: "empty host"},
		{in: "[fe80::1%eth0]:80", err: "zoned"},
		{in: strings.Repeat("a", 256) + ":1", err: "at most 255"},
	} {
		got, err := ParseAddr(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseAddr(%.40q) error = %v, want containing %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseAddr(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestAddrRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		a    Addr
		wire string
	}{
		{Addr{IP: netip.MustParseAddr("10.0.0.1"), Port: 0x1f90}, "01 0a 00 00 01 1f 90"},
		{Addr{IP: netip.MustParseAddr("2001:db8::1"), Port: 443}, "04 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01 01 bb"},
		{Addr{Name: "ab.c", Port: 80}, "03 04 61 62 2e 63 00 50"},
	} {
		b, err := AppendAddr(nil, tc.a)
		if err != nil || !bytes.Equal(b, hexb(tc.wire)) {
			t.Errorf("AppendAddr(%v) = % x, %v; want %s", tc.a, b, err, tc.wire)
		}
		got, err := ReadAddr(bytes.NewReader(b))
		if err != nil || got != tc.a {
			t.Errorf("ReadAddr(% x) = %v, %v", b, got, err)
		}
		got, n, err := DecodeAddr(append(b, 0xEE))
		if err != nil || got != tc.a || n != len(b) {
			t.Errorf("DecodeAddr(% x) = %v, %d, %v", b, got, n, err)
		}
		// Every truncation is an unexpected EOF, never a panic.
		for i := 0; i < len(b); i++ {
			if _, err := ReadAddr(bytes.NewReader(b[:i])); !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("ReadAddr(% x) error = %v, want unexpected EOF", b[:i], err)
			}
			if _, _, err := DecodeAddr(b[:i]); !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("DecodeAddr(% x) error = %v, want unexpected EOF", b[:i], err)
			}
		}
	}
	if _, err := AppendAddr(nil, Addr{Name: strings.Repeat("x", 256)}); err == nil {
		t.Error("AppendAddr accepted a 256-byte domain")
	}
	if _, err := AppendAddr(nil, Addr{}); err == nil {
		t.Error("AppendAddr accepted an empty address")
	}
	if _, err := ReadAddr(bytes.NewReader(hexb("03 00 00 50"))); err == nil {
		t.Error("ReadAddr accepted an empty domain")
	}
	if _, err := ReadAddr(bytes.NewReader(hexb("05 01 02"))); !errors.Is(err, ErrAddressType) {
		t.Errorf("ReadAddr(ATYP 5) error = %v, want ErrAddressType", err)
	}
}

func TestGreeting(t *testing.T) {
	b, _ := AppendGreeting(nil, MethodNoAuth, MethodUserPass)
	if !bytes.Equal(b, hexb("05 02 00 02")) {
		t.Fatalf("AppendGreeting = % x", b)
	}
	ms, err := ReadGreeting(bytes.NewReader(b))
	if err != nil || len(ms) != 2 || ms[1] != MethodUserPass {
		t.Fatalf("ReadGreeting = %v, %v", ms, err)
	}
	for _, tc := range []struct {
		in   string
		want error
	}{
		{"04 01 00", ErrVersion},
		{"05 00", nil}, // no methods: error, not ErrVersion
		{"05 03 00 01", io.ErrUnexpectedEOF},
		{"05", io.ErrUnexpectedEOF},
	} {
		_, err := ReadGreeting(bytes.NewReader(hexb(tc.in)))
		if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("ReadGreeting(%s) error = %v, want %v", tc.in, err, tc.want)
		}
	}
	if _, err := AppendGreeting(nil); err == nil {
		t.Error("AppendGreeting with no methods succeeded")
	}
	if m, err := ReadMethodSelection(bytes.NewReader(hexb("05 ff"))); err != nil || m != MethodNoAcceptable {
		t.Errorf("ReadMethodSelection = %v, %v", m, err)
	}
}

func TestRequest5(t *testing.T) {
	req := Request{Command: CmdConnect, Addr: Addr{Name: "example.com", Port: 443}}
	b, err := AppendRequest(nil, req)
	if err != nil {
		t.Fatal(err)
	}
	want := append(hexb("05 01 00 03 0b"), []byte("example.com")...)
	want = append(want, 0x01, 0xbb)
	if !bytes.Equal(b, want) {
		t.Fatalf("AppendRequest = % x\nwant % x", b, want)
	}
	// Exactly one message is consumed: pipelined data stays in the reader.
	r := bytes.NewReader(append(b, "GET /"...))
	got, err := ReadRequest(r)
	if err != nil || got != req || r.Len() != 5 {
		t.Fatalf("ReadRequest = %+v, %v, %d left", got, err, r.Len())
	}
	// One byte at a time works the same.
	got, err = ReadRequest(iotest.OneByteReader(bytes.NewReader(b)))
	if err != nil || got != req {
		t.Fatalf("ReadRequest (one byte reads) = %+v, %v", got, err)
	}

	got, err = ReadRequest(bytes.NewReader(hexb("05 09 00 01 7f 00 00 01 00 50")))
	if !errors.Is(err, ErrCommand) || got.Addr.Port != 80 {
		t.Errorf("unknown command: %+v, %v; want ErrCommand with the address read", got, err)
	}
	if ReplyForError(err) != CommandNotSupported {
		t.Errorf("unknown command maps to %v", ReplyForError(err))
	}
	_, err = ReadRequest(bytes.NewReader(hexb("05 01 00 02 7f 00 00 01 00 50")))
	if !errors.Is(err, ErrAddressType) || ReplyForError(err) != AddressTypeNotSupported {
		t.Errorf("unknown ATYP: %v -> %v", err, ReplyForError(err))
	}
	if _, err := ReadRequest(bytes.NewReader(hexb("04 01 00 01"))); !errors.Is(err, ErrVersion) {
		t.Errorf("wrong version: %v", err)
	}
	if _, err := ReadRequest(bytes.NewReader(hexb("05 01 00 01 7f 00"))); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated: %v", err)
	}
}

func TestReply5(t *testing.T) {
	for code := Succeeded; code <= AddressTypeNotSupported; code++ {
		b, err := AppendReply(nil, code, Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: 1080})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, append([]byte{5, byte(code), 0}, hexb("01 7f 00 00 01 04 38")...)) {
			t.Errorf("AppendReply(%v) = % x", code, b)
		}
		rep, addr, err := ReadReply(bytes.NewReader(b))
		if err != nil || rep != code || addr.Port != 1080 {
			t.Errorf("ReadReply = %v %v %v", rep, addr, err)
		}
		if strings.Contains(code.String(), "unassigned") {
			t.Errorf("code %d has no name", code)
		}
	}
	b, _ := AppendReply(nil, GeneralFailure, Addr{})
	if !bytes.Equal(b, hexb("05 01 00 01 00 00 00 00 00 00")) {
		t.Errorf("empty bound address encodes as % x", b)
	}
	if Reply(0x42).String() != "unassigned reply 0x42" {
		t.Error(Reply(0x42).String())
	}
}

func TestUserPass(t *testing.T) {
	b, err := AppendUserPass(nil, "alice", "s3cret")
	if err != nil || !bytes.Equal(b, append(append(hexb("01 05"), "alice"...), append([]byte{6}, "s3cret"...)...)) {
		t.Fatalf("AppendUserPass = % x, %v", b, err)
	}
	u, p, err := ReadUserPass(bytes.NewReader(b))
	if err != nil || u != "alice" || p != "s3cret" {
		t.Fatalf("ReadUserPass = %q %q %v", u, p, err)
	}
	for i := range b {
		if _, _, err := ReadUserPass(bytes.NewReader(b[:i])); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("truncated at %d: %v", i, err)
		}
	}
	if _, _, err := ReadUserPass(bytes.NewReader(hexb("05 01 61 01 62"))); !errors.Is(err, ErrVersion) {
		t.Errorf("wrong subnegotiation version: %v", err)
	}
	for _, bad := range [][2]string{{"", "x"}, {"x", ""}, {strings.Repeat("u", 256), "x"}} {
		if _, err := AppendUserPass(nil, bad[0], bad[1]); err == nil {
			t.Errorf("AppendUserPass(%d, %d bytes) succeeded", len(bad[0]), len(bad[1]))
		}
	}
	if ok, err := ReadUserPassStatus(bytes.NewReader(hexb("01 00"))); !ok || err != nil {
		t.Error("status success misread")
	}
	if ok, err := ReadUserPassStatus(bytes.NewReader(hexb("01 01"))); ok || err != nil {
		t.Error("status failure misread")
	}
}

func TestRequest4(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  Request4
		wire string
	}{
		{"socks4", Request4{Command: CmdConnect, Addr: Addr{IP: netip.MustParseAddr("66.102.7.99"), Port: 80}, UserID: "fred"},
			"04 01 00 50 42 66 07 63 66 72 65 64 00"},
		{"socks4a", Request4{Command: CmdBind, Addr: Addr{Name: "a.io", Port: 21}},
			"04 02 00 15 00 00 00 01 00 61 2e 69 6f 00"},
	} {
		b, err := AppendRequest4(nil, tc.req)
		if err != nil || !bytes.Equal(b, hexb(tc.wire)) {
			t.Errorf("%s: AppendRequest4 = % x, %v; want %s", tc.name, b, err, tc.wire)
		}
		r := bytes.NewReader(append(b, 'X'))
		got, err := ReadRequest4(r)
		if err != nil || got != tc.req || r.Len() != 1 {
			t.Errorf("%s: ReadRequest4 = %+v, %v, %d left", tc.name, got, err, r.Len())
		}
		for i := range b {
			if _, err := ReadRequest4(bytes.NewReader(b[:i])); !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("%s truncated at %d: %v", tc.name, i, err)
			}
		}
	}
	long := append(hexb("04 01 00 50 7f 00 00 01"), bytes.Repeat([]byte{'u'}, 300)...)
	if _, err := ReadRequest4(bytes.NewReader(append(long, 0))); err == nil || !strings.Contains(err.Error(), "USERID longer") {
		t.Errorf("oversize USERID: %v", err)
	}
	longHost := append(hexb("04 01 00 50 00 00 00 09 00"), bytes.Repeat([]byte{'h'}, 300)...)
	if _, err := ReadRequest4(bytes.NewReader(longHost)); err == nil || !strings.Contains(err.Error(), "domain longer") {
		t.Errorf("oversize SOCKS4a domain: %v", err)
	}
	if _, err := ReadRequest4(bytes.NewReader(hexb("04 01 00 50 00 00 00 01 00 00"))); err == nil {
		t.Error("empty SOCKS4a domain accepted")
	}
	_, err := ReadRequest4(bytes.NewReader(hexb("04 03 00 50 7f 00 00 01 00")))
	if !errors.Is(err, ErrCommand) {
		t.Errorf("UDP ASSOCIATE over SOCKS4: %v", err)
	}
	if _, err := AppendRequest4(nil, Request4{Command: CmdConnect, Addr: Addr{IP: netip.MustParseAddr("::1"), Port: 1}}); !errors.Is(err, ErrAddressType) {
		t.Errorf("IPv6 over SOCKS4: %v", err)
	}
	if _, err := AppendRequest4(nil, Request4{Command: CmdConnect, Addr: Addr{IP: netip.MustParseAddr("1.1.1.1")}, UserID: "a\x00b"}); err == nil {
		t.Error("NUL in USERID accepted")
	}
}

func TestReply4(t *testing.T) {
	for _, code := range []byte{Reply4Granted, Reply4Rejected, Reply4NoIdentd, Reply4IdentMismatch} {
		b := AppendReply4(nil, code, netip.MustParseAddrPort("1.2.3.4:258"))
		if !bytes.Equal(b, []byte{0, code, 1, 2, 1, 2, 3, 4}) {
			t.Errorf("AppendReply4 = % x", b)
		}
		got, ap, err := ReadReply4(bytes.NewReader(b))
		if err != nil || got != code || ap.Port() != 258 {
			t.Errorf("ReadReply4 = %x %v %v", got, ap, err)
		}
	}
	if b := AppendReply4(nil, Reply4Granted, netip.MustParseAddrPort("[::1]:5")); !bytes.Equal(b, hexb("00 5a 00 05 00 00 00 00")) {
		t.Errorf("IPv6 bound address encodes as % x", b)
	}
	if _, _, err := ReadReply4(bytes.NewReader(hexb("04 5a 00 00 00 00 00 00"))); !errors.Is(err, ErrVersion) {
		t.Errorf("reply with VN 4: %v", err)
	}
	if Succeeded.Reply4() != Reply4Granted || ConnectionRefused.Reply4() != Reply4Rejected {
		t.Error("Reply4 mapping")
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestReplyForError(t *testing.T) {
	op := func(err error) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", err)}
	}
	for _, tc := range []struct {
		err  error
		want Reply
	}{
		{nil, Succeeded},
		{errors.New("boom"), GeneralFailure},
		{op(syscall.ECONNREFUSED), ConnectionRefused},
		{op(syscall.ENETUNREACH), NetworkUnreachable},
		{op(syscall.EHOSTUNREACH), HostUnreachable},
		{op(syscall.ETIMEDOUT), HostUnreachable},
		{&net.OpError{Op: "dial", Err: timeoutErr{}}, HostUnreachable},
		{&net.DNSError{Err: "no such host", Name: "x.invalid", IsNotFound: true}, HostUnreachable},
		{errors.Join(errors.New("rule 3"), ErrNotAllowed), NotAllowed},
		{&net.OpError{Op: "socks connect", Err: &ReplyError{Version: Version5, Code: TTLExpired}}, TTLExpired},
		{&ReplyError{Version: Version4, Code: GeneralFailure, Code4: Reply4Rejected}, GeneralFailure},
	} {
		if got := ReplyForError(tc.err); got != tc.want {
			t.Errorf("ReplyForError(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
	re := &ReplyError{Version: Version5, Code: ConnectionRefused}
	if !errors.Is(&net.OpError{Op: "dial", Err: re}, syscall.ECONNREFUSED) {
		t.Error("a refused reply is not errors.Is ECONNREFUSED")
	}
	if re.Error() != "socks5: connection refused (0x05)" {
		t.Error(re.Error())
	}
}

func TestUDPHeader(t *testing.T) {
	a := Addr{IP: netip.MustParseAddr("192.0.2.1"), Port: 53}
	b, _ := AppendUDPHeader(nil, 0, a)
	b = append(b, "hi"...)
	if !bytes.Equal(b, append(hexb("00 00 00 01 c0 00 02 01 00 35"), "hi"...)) {
		t.Fatalf("header = % x", b)
	}
	frag, got, p, err := ParseUDP(b)
	if err != nil || frag != 0 || got != a || string(p) != "hi" {
		t.Fatalf("ParseUDP = %d %v %q %v", frag, got, p, err)
	}
	for i := 0; i < 10; i++ {
		if _, _, _, err := ParseUDP(b[:i]); err == nil {
			t.Errorf("ParseUDP accepted %d bytes", i)
		}
	}
	if _, _, _, err := ParseUDP(hexb("00 01 00 01 c0 00 02 01 00 35")); err == nil {
		t.Error("nonzero RSV accepted")
	}
}

func TestFragmentReassemble(t *testing.T) {
	a := Addr{Name: "echo.test", Port: 7}
	payload := bytes.Repeat([]byte("0123456789"), 100)
	frags, err := Fragment(a, payload, 300)
	if err != nil || len(frags) != 4 {
		t.Fatalf("Fragment = %d frags, %v", len(frags), err)
	}
	var r Reassembler
	for i, d := range frags {
		frag, addr, p, err := ParseUDP(d)
		if err != nil {
			t.Fatal(err)
		}
		wantFrag := byte(i + 1)
		if i == 3 {
			wantFrag |= FragLast
		}
		if frag != wantFrag {
			t.Fatalf("fragment %d has FRAG %#x", i, frag)
		}
		full, to, ok := r.Add(frag, addr, p)
		if ok != (i == 3) {
			t.Fatalf("fragment %d: ok=%v", i, ok)
		}
		if ok && (!bytes.Equal(full, payload) || to != a) {
			t.Fatalf("reassembled %d bytes to %v", len(full), to)
		}
	}
	if _, err := Fragment(a, make([]byte, 128*10), 10); err == nil {
		t.Error("Fragment into 128 pieces succeeded")
	}
	if one, _ := Fragment(a, []byte("x"), 10); len(one) != 1 || one[0][2] != 0 {
		t.Error("small payload was fragmented")
	}
}

func TestReassemblerResets(t *testing.T) {
	a := Addr{IP: netip.MustParseAddr("10.0.0.1"), Port: 9}
	b := Addr{IP: netip.MustParseAddr("10.0.0.2"), Port: 9}
	now := time.Unix(1000, 0)
	r := Reassembler{Timeout: 5 * time.Second, MaxSize: 10, Now: func() time.Time { return now }}
	add := func(frag byte, to Addr, p string) (string, bool) {
		full, _, ok := r.Add(frag, to, []byte(p))
		return string(full), ok
	}
	// Out of order: 1, 2, then 2 again restarts; the restarted sequence lacks 1.
	add(1, a, "a")
	add(2, a, "b")
	if _, ok := add(2|FragLast, a, "c"); ok {
		t.Error("repeated position completed a datagram")
	}
	if r.Pending() {
		t.Error("a sequence without its first fragment is pending")
	}
	// A fresh 1 after a partial sequence starts over.
	add(1, a, "x")
	add(1, a, "y")
	if s, ok := add(2|FragLast, a, "z"); !ok || s != "yz" {
		t.Errorf("restart: %q %v", s, ok)
	}
	// A gap drops the sequence.
	add(1, a, "a")
	if _, ok := add(3|FragLast, a, "c"); ok || r.Pending() {
		t.Error("a gap completed or kept a sequence")
	}
	// The timer: a fragment after the deadline restarts the queue.
	add(1, a, "a")
	now = now.Add(6 * time.Second)
	if _, ok := add(2|FragLast, a, "b"); ok {
		t.Error("a fragment after the reassembly timer completed a datagram")
	}
	// A different address restarts the queue.
	add(1, a, "a")
	if _, ok := add(2|FragLast, b, "b"); ok {
		t.Error("fragments to two addresses were joined")
	}
	// Past the size cap the datagram is dropped whole, and the next one works.
	add(1, a, "12345678")
	add(2, a, "90ab")
	if _, ok := add(3|FragLast, a, "c"); ok {
		t.Error("oversize datagram delivered")
	}
	if s, ok := add(1|FragLast, a, "ok"); !ok || s != "ok" {
		t.Errorf("after drop: %q %v", s, ok)
	}
	// FRAG 0 passes through and clears any queue.
	add(1, a, "a")
	if s, ok := add(0, a, "whole"); !ok || s != "whole" || r.Pending() {
		t.Errorf("FRAG 0: %q %v pending=%v", s, ok, r.Pending())
	}
	if _, ok := add(FragLast, a, "?"); ok {
		t.Error("position 0 with the last bit was accepted")
	}
}
