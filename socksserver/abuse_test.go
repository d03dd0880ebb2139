package socksserver

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tunsocks/tunsocks/socks"
)

// dialFrom opens a TCP connection from the loopback address src (any
// 127.0.0.0/8 address works on Linux) with a safety deadline.
func dialFrom(t testing.TB, src, addr string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Timeout: ioTimeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(ioTimeout))
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// waitStats waits (bounded) until the server's stats satisfy ok.
func waitStats(t testing.TB, s *Server, what string, ok func(Stats) bool) Stats {
	t.Helper()
	for i := 0; i < 1000; i++ {
		if st := s.Stats(); ok(st) {
			return st
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("server stats never reached %s: %+v", what, s.Stats())
	return Stats{}
}

// connectEcho runs a SOCKS5 CONNECT to echo on c and checks that bytes
// come back.
func connectEcho(t testing.TB, c net.Conn, echo netip.AddrPort) {
	t.Helper()
	noAuth(t, c)
	send(t, c, req5(1, echo))
	if rep, _ := readReply5(t, c); rep != 0 {
		t.Fatalf("CONNECT reply %v", socks.Reply(rep))
	}
	readLine(t, c) // the echo's greeting
	send(t, c, []byte("ping"))
	expect(t, c, []byte("ping"))
}

func TestSlowlorisDoesNotLockOutClients(t *testing.T) {
	// 1,000 sockets that never speak, under MaxConns 1000: they are
	// handshakes, not relays, so a client from another address is served;
	// once they have gone stale, each new connection from the attacker's
	// own address closes the oldest of them, so a client there is served
	// too, and the attacker's count does not grow. (Before, MaxConns
	// counted them and every client was closed at once until they timed
	// out.)
	echo := mustAP(peerEcho(t, "tcp4", "127.0.0.1:0"))
	srv := startServer(t, Config{MaxConns: 1000, HandshakeTimeout: time.Minute})
	const silent = 1000
	for range silent {
		dialFrom(t, "127.0.0.1", srv.addr)
	}
	waitStats(t, srv.Server, "1,000 accepted", func(st Stats) bool { return int64(st.Handshakes)+st.HandshakesShed >= silent })
	connectEcho(t, dialFrom(t, "127.0.0.2", srv.addr), echo)
	time.Sleep(staleHandshake) // the silent sockets go stale
	connectEcho(t, dialFrom(t, "127.0.0.1", srv.addr), echo)
	before := srv.Stats()
	if before.HandshakesShed < 1 {
		t.Errorf("stats %+v: a client from the attacker's address shed none of its stale sockets", before)
	}
	const more = 200
	for range more {
		dialFrom(t, "127.0.0.1", srv.addr)
	}
	st := waitStats(t, srv.Server, "200 more shed", func(st Stats) bool { return st.HandshakesShed >= before.HandshakesShed+more })
	if st.Handshakes > silent {
		t.Errorf("%d handshakes held after 200 more silent sockets, want at most the %d there were", st.Handshakes, silent)
	}
	if st.ConnLimited != 0 || st.Relays != 2 {
		t.Errorf("stats %+v: want 2 relays and nothing refused for MaxConns", st)
	}
	// The sheds are logged as a few aggregated lines, not one per socket.
	if n := len(srv.logs.records("handshake budget full; oldest handshake closed")); n != 1 {
		t.Errorf("%d immediate log lines for %d sheds, want 1 (the rest aggregated)", n, st.HandshakesShed)
	}
}

func TestManyHandshakesFromOneClient(t *testing.T) {
	// Another tunsocks carries a whole desktop through the server from
	// one address: 300 connections open at once, each in its handshake
	// until all have connected, are all served (none is shed for the
	// client's budget of 128: none has gone stale).
	echo := mustAP(peerEcho(t, "tcp4", "127.0.0.1:0"))
	srv := startServer(t, Config{})
	// What makes a handshake stale is its age (2 s), and opening 300
	// connections took up to 2.15 s under -race on a loaded 2-core
	// machine: the first ones could go stale before the last arrived, and
	// be shed rightly. Here none may go stale, whatever the load.
	srv.hs.mu.Lock()
	srv.hs.stale = time.Hour
	srv.hs.mu.Unlock()
	const n = 300
	conns := make([]*net.TCPConn, n)
	for i := range conns {
		conns[i] = dialFrom(t, "127.0.0.1", srv.addr)
	}
	waitStats(t, srv.Server, "300 handshakes", func(st Stats) bool { return st.Handshakes == n })
	request := append([]byte{5, 1, 0}, req5(1, echo)...)
	for _, c := range conns {
		send(t, c, request)
	}
	for i, c := range conns {
		expect(t, c, []byte{5, 0})
		if rep, _ := readReply5(t, c); rep != 0 {
			t.Fatalf("connection %d: CONNECT reply %v", i, socks.Reply(rep))
		}
	}
	if st := srv.Stats(); st.HandshakesShed != 0 || st.Relays != n {
		t.Errorf("stats %+v: want %d relays and nothing shed", st, n)
	}
}

func TestHandshakeBudgetPerClientShedsOnlyStale(t *testing.T) {
	h := handshakes{perClient: 4, stale: 2 * time.Second}
	t0 := time.Unix(1e9, 0)
	key := keyOf(netip.MustParseAddr("192.0.2.1"))
	var cs []*conn
	for i := range 10 {
		c := &conn{key: key, start: t0.Add(time.Duration(i) * time.Millisecond)}
		cs = append(cs, c)
		if shed := h.add(c, c.start); len(shed) != 0 {
			t.Fatalf("handshake %d of a burst shed %d", i, len(shed))
		}
	}
	late := &conn{key: key, start: t0.Add(3 * time.Second)}
	if shed := h.add(late, late.start); len(shed) != 1 || shed[0] != cs[0] {
		t.Fatalf("a new handshake after the burst went stale shed %v, want the oldest", shed)
	}
	other := &conn{key: keyOf(netip.MustParseAddr("192.0.2.2")), start: late.start}
	if shed := h.add(other, other.start); len(shed) != 0 {
		t.Fatalf("another client's handshake shed %d", len(shed))
	}
	if !h.done(cs[1]) || h.done(cs[0]) {
		t.Error("done: a live handshake not found, or a shed one found")
	}
	if n := h.len(); n != 10 {
		t.Errorf("%d handshakes, want 10", n)
	}
}

func TestHandshakeBudgetTotal(t *testing.T) {
	// The total budget sheds the oldest handshake of all, whoever it is.
	srv := startServer(t, Config{MaxHandshakes: 4, MaxHandshakesPerClient: -1})
	first := dialFrom(t, "127.0.0.3", srv.addr)
	waitStats(t, srv.Server, "1 handshake", func(st Stats) bool { return st.Handshakes == 1 })
	for range 4 {
		dialFrom(t, "127.0.0.4", srv.addr)
	}
	waitStats(t, srv.Server, "1 shed", func(st Stats) bool { return st.HandshakesShed == 1 && st.Handshakes == 4 })
	expectClosed(t, first)
}

func TestConnLimitRefusalsAggregated(t *testing.T) {
	// With MaxConns relays served, new connections are closed at accept;
	// 200 of them make one log line at once and one aggregated line.
	echo := mustAP(peerEcho(t, "tcp4", "127.0.0.1:0"))
	srv := startServer(t, Config{MaxConns: 1})
	connectEcho(t, dial(t, srv.addr), echo)
	const refused = 200
	for range refused {
		c := dial(t, srv.addr)
		expectClosed(t, c)
	}
	st := waitStats(t, srv.Server, "200 refused", func(st Stats) bool { return st.ConnLimited == refused })
	if st.Relays != 1 {
		t.Errorf("relays = %d, want 1", st.Relays)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	srv.Shutdown(ctx) // flushes the count
	cancel()
	first := srv.logs.records("connection limit reached; new connections closed")
	rest := srv.logs.records("connection limit reached; new connections closed (repeated)")
	if len(first) != 1 || len(rest) != 1 {
		t.Fatalf("%d immediate and %d aggregated lines for %d refusals, want 1 and 1", len(first), len(rest), refused)
	}
	if n := rest[0]["repeated"].(float64); n != refused-1 {
		t.Errorf("aggregated line counts %v refusals, want %d", n, refused-1)
	}
}

// authAttempt does a SOCKS5 username/password authentication from src and
// returns the status byte (0 is success).
func authAttempt(t testing.TB, src, addr, user, pass string) byte {
	c := dialFrom(t, src, addr)
	defer c.Close()
	send(t, c, []byte{5, 1, 2})
	expect(t, c, []byte{5, 2})
	b := append([]byte{1, byte(len(user))}, user...)
	b = append(append(b, byte(len(pass))), pass...)
	send(t, c, b)
	st := make([]byte, 2)
	if _, err := c.Read(st[:1]); err != nil {
		t.Errorf("authentication status: %v", err)
		return 0xff
	}
	if _, err := c.Read(st[1:]); err != nil {
		t.Errorf("authentication status: %v", err)
		return 0xff
	}
	return st[1]
}

func TestPasswordGuessingThrottled(t *testing.T) {
	// 1,000 guesses from one address, 20 at a time. Only the first
	// AuthFailureLimit (10) have their password checked, each answered
	// later than the one before; the rest are refused unchecked, so the
	// right password, guessed 500th, is refused too. Another address still
	// authenticates. Before, all 1,000 were checked and answered at once
	// (0.1 s), and the right guess got in.
	srv := startServer(t, Config{
		Users:            map[string]string{"alice": "right"},
		AuthFailureDelay: 20 * time.Microsecond, // short, for the test; the default is 250 ms
	})
	const guesses, workers = 1000, 20
	var mu sync.Mutex
	results := map[byte]int{}
	var rightGuess byte = 0xee
	var wg sync.WaitGroup
	next := make(chan int)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				pass := fmt.Sprintf("guess%d", i)
				if i == 500 {
					pass = "right"
				}
				r := authAttempt(t, "127.0.0.5", srv.addr, "alice", pass)
				mu.Lock()
				results[r]++
				if i == 500 {
					rightGuess = r
				}
				mu.Unlock()
			}
		}()
	}
	for i := range guesses {
		next <- i
	}
	close(next)
	wg.Wait()

	st := srv.Stats()
	if st.AuthFailed != DefaultAuthFailureLimit {
		t.Errorf("%d passwords checked and wrong, want %d (the limit)", st.AuthFailed, DefaultAuthFailureLimit)
	}
	if st.AuthRefused < guesses-DefaultAuthFailureLimit-1 {
		t.Errorf("%d attempts refused unchecked, want at least %d", st.AuthRefused, guesses-DefaultAuthFailureLimit-1)
	}
	if rightGuess != socks.UserPassFailure {
		t.Errorf("the right password, guessed after the limit, got status %d; want refused", rightGuess)
	}
	if results[0] != 0 || results[socks.UserPassFailure] != guesses {
		t.Errorf("statuses %v, want all %d refused", results, guesses)
	}
	// Each checked failure waited 20 µs << (failures before it); each
	// refused one the most a failure would wait, 20 µs << 10.
	var want time.Duration
	for i := range DefaultAuthFailureLimit {
		want += 20 * time.Microsecond << i
	}
	want += time.Duration(st.AuthRefused) * (20 * time.Microsecond << DefaultAuthFailureLimit)
	if st.AuthDelay != want {
		t.Errorf("total delay %v, want %v", st.AuthDelay, want)
	}
	if got := authAttempt(t, "127.0.0.6", srv.addr, "alice", "right"); got != 0 {
		t.Errorf("another address with the right password got status %d", got)
	}
	if n := len(srv.logs.records("authentication failed")) + len(srv.logs.records("too many failed authentications; attempt refused unchecked")); n > 2 {
		t.Errorf("%d immediate log lines for %d failures, want at most 2 (the rest aggregated)", n, guesses)
	}
}

func TestAuthLimiterDrains(t *testing.T) {
	now := time.Unix(1e9, 0)
	l := authLimiter{limit: 3, delay: 100 * time.Millisecond, now: func() time.Time { return now }}
	k := keyOf(netip.MustParseAddr("192.0.2.1"))
	wrong := func() bool { return false }
	right := func() bool { return true }
	for i, want := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond} {
		if res, d := l.check(k, wrong); res != authFailed || d != want {
			t.Errorf("failure %d: %v after %v, want a failure after %v", i+1, res, d, want)
		}
	}
	checked := false
	if res, d := l.check(k, func() bool { checked = true; return true }); res != authBlocked || d != 800*time.Millisecond || checked {
		t.Fatalf("after 3 failures within a minute: %v after %v (checked %v), want blocked after 800ms, unchecked", res, d, checked)
	}
	if res, _ := l.check(keyOf(netip.MustParseAddr("192.0.2.2")), right); res != authOK {
		t.Error("another address is blocked")
	}
	// IPv6 addresses of one /64 are one client.
	k6 := keyOf(netip.MustParseAddr("2001:db8::1"))
	if keyOf(netip.MustParseAddr("2001:db8::ffff:1")) != k6 || keyOf(netip.MustParseAddr("2001:db8:0:1::1")) == k6 {
		t.Error("IPv6 clients are not keyed by /64")
	}
	// One failure drains every 20 s (3 a minute), but trying while
	// blocked refills the level: an address that keeps trying more often
	// stays blocked.
	for range 5 {
		now = now.Add(15 * time.Second)
		if res, _ := l.check(k, right); res != authBlocked {
			t.Fatal("unblocked while still trying every 15 s")
		}
	}
	now = now.Add(20 * time.Second)
	if res, _ := l.check(k, right); res != authOK {
		t.Fatal("still blocked after a pause of one failure's drain time")
	}
	now = now.Add(time.Minute)
	if _, d := l.check(k, wrong); d != 100*time.Millisecond {
		t.Errorf("after a quiet minute the delay is %v, want the first one again", d)
	}
}

func TestAuthLimiterBounded(t *testing.T) {
	now := time.Unix(1e9, 0)
	l := authLimiter{limit: 3, delay: time.Millisecond, now: func() time.Time { return now }}
	for i := range maxAuthClients + 100 {
		l.check(keyOf(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})), func() bool { return false })
	}
	if n := len(l.full); n > maxAuthClients {
		t.Errorf("the limiter remembers %d addresses, want at most %d", n, maxAuthClients)
	}
}

func TestBindDeniedPeer(t *testing.T) {
	// A BIND naming a denied peer is refused at once; a BIND for any peer
	// refuses a peer that connects from a denied address.
	srv := startServer(t, Config{DenyDest: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("127.0.0.7/32")}})
	c := dial(t, srv.addr)
	noAuth(t, c)
	send(t, c, req5(2, mustAP("10.1.2.3:0")))
	if rep, _ := readReply5(t, c); rep != byte(socks.NotAllowed) {
		t.Fatalf("BIND for a denied peer: reply %v, want not allowed", socks.Reply(rep))
	}

	c = dial(t, srv.addr)
	noAuth(t, c)
	at := bindFirst(t, c, false, req5(2, mustAP("0.0.0.0:0")))
	peer := dialFrom(t, "127.0.0.7", at.String())
	if rep, _ := readReply5(t, c); rep != byte(socks.NotAllowed) {
		t.Fatalf("second BIND reply for a denied peer: %v, want not allowed", socks.Reply(rep))
	}
	expectClosed(t, peer)

	// A peer from an allowed address still gets through.
	c = dial(t, srv.addr)
	noAuth(t, c)
	at = bindFirst(t, c, false, req5(2, mustAP("0.0.0.0:0")))
	dialFrom(t, "127.0.0.8", at.String())
	if rep, _ := readReply5(t, c); rep != 0 {
		t.Fatalf("second BIND reply for an allowed peer: %v", socks.Reply(rep))
	}
}

func TestUDPDeniedSource(t *testing.T) {
	// The relay's outbound socket accepts datagrams from anyone; one from
	// a denied address is dropped, one from an allowed address delivered.
	srv := startServer(t, Config{DenyDest: []netip.Prefix{netip.MustParsePrefix("127.0.0.9/32")}})
	target := udpClient(t, "127.0.0.1")
	targetAt := target.LocalAddr().(*net.UDPAddr).AddrPort()
	ctrl, relayAt := associate(t, srv, mustAP("0.0.0.0:0"))
	defer ctrl.Close()
	client := udpClient(t, "127.0.0.1")
	sendUDP(t, client, relayAt, 0, socks.AddrFromAddrPort(targetAt), "hello")
	b := make([]byte, 100)
	n, out, err := target.ReadFromUDPAddrPort(b)
	if err != nil || string(b[:n]) != "hello" {
		t.Fatalf("target read %q, %v", b[:n], err)
	}
	denied := udpClient(t, "127.0.0.9")
	if _, err := denied.WriteToUDPAddrPort([]byte("from denied"), out); err != nil {
		t.Fatal(err)
	}
	allowed := udpClient(t, "127.0.0.10")
	if _, err := allowed.WriteToUDPAddrPort([]byte("from allowed"), out); err != nil {
		t.Fatal(err)
	}
	if got := recvUDP(t, client, relayAt, allowed.LocalAddr().(*net.UDPAddr).AddrPort()); got != "from allowed" {
		t.Fatalf("client got %q first, want the allowed datagram (the denied one dropped)", got)
	}
}

// stubChecked is a CheckedDialer that resolves every name to ip and runs
// the check before connecting.
type stubChecked struct {
	ip     netip.Addr
	called int
}

func (d *stubChecked) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	panic("DialContext called on a CheckedDialer")
}

func (d *stubChecked) DialContextChecked(ctx context.Context, network, address string, check func(netip.AddrPort) error) (net.Conn, error) {
	d.called++
	a, err := socks.ParseAddr(address)
	if err != nil {
		return nil, err
	}
	ip := a.IP
	if a.Name != "" {
		ip = d.ip
	}
	ap := netip.AddrPortFrom(ip, a.Port)
	if err := check(ap); err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	var nd net.Dialer
	return nd.DialContext(ctx, network, ap.String())
}

func TestDenyLoopback(t *testing.T) {
	echo := mustAP(peerEcho(t, "tcp4", "127.0.0.1:0"))
	srv := startServer(t, Config{DenyLoopback: true})
	self := mustAP(srv.addr)
	refused := func(t *testing.T, srv *testServer, req []byte) {
		t.Helper()
		c := dial(t, srv.addr)
		noAuth(t, c)
		send(t, c, req)
		if rep, _ := readReply5(t, c); rep != byte(socks.NotAllowed) {
			t.Errorf("reply %v, want not allowed", socks.Reply(rep))
		}
	}
	for name, req := range map[string][]byte{
		"loopback target":     req5(1, echo),
		"other loopback IP":   req5(1, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), echo.Port())),
		"IPv6 loopback":       req5(1, netip.AddrPortFrom(netip.IPv6Loopback(), echo.Port())),
		"IPv4-mapped":         req5(1, netip.AddrPortFrom(netip.MustParseAddr("::ffff:127.0.0.1"), echo.Port())),
		"unspecified":         req5(1, netip.AddrPortFrom(netip.IPv4Unspecified(), echo.Port())),
		"nested to itself":    req5(1, self),
		"localhost name":      req5Name(1, "localhost", echo.Port()),
		"localhost subdomain": req5Name(1, "db.localhost.", echo.Port()),
	} {
		t.Run(name, func(t *testing.T) { refused(t, srv, req) })
	}
	t.Run("name resolving to loopback", func(t *testing.T) {
		// The check runs on the address the dialer resolved.
		d := &stubChecked{ip: netip.MustParseAddr("127.0.0.1")}
		srv := startServer(t, Config{DenyLoopback: true, Dialer: d})
		refused(t, srv, req5Name(1, "rebound.example", echo.Port()))
		if d.called != 1 {
			t.Errorf("the checked dial ran %d times", d.called)
		}
	})
	t.Run("own address", func(t *testing.T) {
		own := ownNonLoopback(t)
		ln, err := net.Listen("tcp", netip.AddrPortFrom(own, 0).String())
		if err != nil {
			t.Skipf("cannot listen on %v: %v", own, err)
		}
		ln.Close()
		refused(t, srv, req5(1, netip.AddrPortFrom(own, mustAP(ln.Addr().String()).Port())))
	})
	t.Run("BIND and UDP", func(t *testing.T) {
		refused(t, srv, req5(2, mustAP("127.0.0.1:0")))
		// A datagram to loopback is dropped: the echo never answers.
		ctrl, relayAt := associate(t, srv, mustAP("0.0.0.0:0"))
		defer ctrl.Close()
		client := udpClient(t, "127.0.0.1")
		echo := udpClient(t, "127.0.0.1")
		sendUDP(t, client, relayAt, 0, socks.AddrFromAddrPort(echo.LocalAddr().(*net.UDPAddr).AddrPort()), "x")
		srv.logs.waitRecord(t, "UDP: datagram dropped", func(r map[string]any) bool {
			return r["why"] == "destination denied" && strings.Contains(fmt.Sprint(r["err"]), "own host")
		})
	})
	t.Run("allowed without DenyLoopback", func(t *testing.T) {
		srv := startServer(t, Config{})
		connectEcho(t, dial(t, srv.addr), echo)
	})
}

// ownNonLoopback returns an address of this host that is not loopback, or
// skips.
func ownNonLoopback(t *testing.T) netip.Addr {
	ifas, err := net.InterfaceAddrs()
	if err != nil {
		t.Skip(err)
	}
	for _, ifa := range ifas {
		if n, ok := ifa.(*net.IPNet); ok {
			if a, ok := netip.AddrFromSlice(n.IP); ok && a.Unmap().Is4() && !a.IsLoopback() {
				return a.Unmap()
			}
		}
	}
	t.Skip("this host has no non-loopback IPv4 address")
	return netip.Addr{}
}
