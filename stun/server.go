package stun

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
)

// PacketListener opens the responder's UDP sockets. *net.ListenConfig
// satisfies it; a responder in another network namespace passes a listener
// for that namespace.
type PacketListener interface {
	ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error)
}

// Server is an RFC 5780 Binding responder on two IP addresses and two ports:
// four sockets, (A1,P1) the primary, (A2,P2) the alternate, and the two
// mixed ones. A request carrying CHANGE-REQUEST is answered from the socket
// that differs in IP, port or both from the one it arrived on; every success
// response carries XOR-MAPPED-ADDRESS, MAPPED-ADDRESS, RESPONSE-ORIGIN and
// OTHER-ADDRESS.
type Server struct {
	primary, alternate netip.AddrPort
	log                *slog.Logger
	socks              [2][2]net.PacketConn // [ip][port]: 0 primary, 1 alternate
	wg                 sync.WaitGroup
	once               sync.Once
}

// Software is the SOFTWARE attribute the responder sends.
const Software = "tunsocks STUN responder"

// ParseServerAddrs parses the "ADDR1,ADDR2" of `tunsocks server --stun`:
// two IP:port addresses whose IPs differ and whose ports differ. ADDR2 may
// be a bare IP; its port is then ADDR1's port plus one.
func ParseServerAddrs(s string) (primary, alternate netip.AddrPort, err error) {
	a, b, ok := cutComma(s)
	if !ok {
		return primary, alternate, fmt.Errorf("stun: %q: want two addresses, IP1:PORT1,IP2:PORT2 (RFC 5780 needs a second IP and port)", s)
	}
	primary, err = netip.ParseAddrPort(a)
	if err != nil || primary.Port() == 0 {
		return primary, alternate, fmt.Errorf("stun: %q: want IP:PORT like 203.0.113.1:3478", a)
	}
	if ip, perr := netip.ParseAddr(b); perr == nil {
		if primary.Port() == 65535 {
			return primary, alternate, fmt.Errorf("stun: %q: give the second address a port", s)
		}
		alternate = netip.AddrPortFrom(ip, primary.Port()+1)
	} else if alternate, err = netip.ParseAddrPort(b); err != nil || alternate.Port() == 0 {
		return primary, alternate, fmt.Errorf("stun: %q: want IP:PORT or IP like 203.0.113.2:3479", b)
	}
	primary = netip.AddrPortFrom(primary.Addr().Unmap(), primary.Port())
	alternate = netip.AddrPortFrom(alternate.Addr().Unmap(), alternate.Port())
	switch {
	case primary.Addr() == alternate.Addr():
		return primary, alternate, fmt.Errorf("stun: %q: the two addresses must have different IPs (RFC 5780)", s)
	case primary.Port() == alternate.Port():
		return primary, alternate, fmt.Errorf("stun: %q: the two addresses must have different ports (RFC 5780)", s)
	case primary.Addr().Is4() != alternate.Addr().Is4():
		return primary, alternate, fmt.Errorf("stun: %q: both addresses must be IPv4 or both IPv6", s)
	case primary.Addr().Zone() != "" || alternate.Addr().Zone() != "":
		return primary, alternate, fmt.Errorf("stun: %q: zoned IPv6 addresses are not supported", s)
	}
	return primary, alternate, nil
}

func cutComma(s string) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			return s[:i], s[i+1:], s[:i] != "" && s[i+1:] != ""
		}
	}
	return s, "", false
}

// Listen opens the four sockets of a responder for primary and alternate
// (see ParseServerAddrs). lc nil means a plain net.ListenConfig. log nil
// discards the log.
func Listen(ctx context.Context, lc PacketListener, primary, alternate netip.AddrPort, log *slog.Logger) (*Server, error) {
	if lc == nil {
		lc = &net.ListenConfig{}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if primary.Addr() == alternate.Addr() || primary.Port() == alternate.Port() {
		return nil, errors.New("stun: the primary and alternate addresses must differ in IP and in port")
	}
	s := &Server{primary: primary, alternate: alternate, log: log}
	ips := [2]netip.Addr{primary.Addr(), alternate.Addr()}
	ports := [2]uint16{primary.Port(), alternate.Port()}
	for i := range 2 {
		for j := range 2 {
			addr := netip.AddrPortFrom(ips[i], ports[j])
			pc, err := lc.ListenPacket(ctx, "udp", addr.String())
			if err != nil {
				s.closeAll()
				return nil, fmt.Errorf("stun: listen on %s: %w", addr, err)
			}
			s.socks[i][j] = pc
		}
	}
	return s, nil
}

// Primary returns the primary address (A1,P1).
func (s *Server) Primary() netip.AddrPort { return s.primary }

// Alternate returns the alternate address (A2,P2).
func (s *Server) Alternate() netip.AddrPort { return s.alternate }

// Serve answers requests until ctx is done or Close is called; it returns
// nil then.
func (s *Server) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	for i := range 2 {
		for j := range 2 {
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.serve(i, j)
			}()
		}
	}
	s.wg.Wait()
	return nil
}

// Close closes the sockets; Serve returns once its loops have ended.
func (s *Server) Close() error {
	s.closeAll()
	return nil
}

func (s *Server) closeAll() {
	s.once.Do(func() {
		for i := range 2 {
			for j := range 2 {
				if s.socks[i][j] != nil {
					s.socks[i][j].Close()
				}
			}
		}
	})
}

func (s *Server) addr(i, j int) netip.AddrPort {
	ips := [2]netip.Addr{s.primary.Addr(), s.alternate.Addr()}
	ports := [2]uint16{s.primary.Port(), s.alternate.Port()}
	return netip.AddrPortFrom(ips[i], ports[j])
}

func (s *Server) serve(i, j int) {
	pc := s.socks[i][j]
	buf := make([]byte, MaxMessageLen+1)
	out := make([]byte, 0, 512)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Warn("STUN read failed", "on", s.addr(i, j).String(), "err", err)
			}
			return
		}
		src := addrPort(from)
		if !src.IsValid() {
			continue
		}
		resp, ri, rj := s.answer(buf[:n], src, i, j)
		if resp == nil {
			continue
		}
		out, err = resp.Append(out[:0], true)
		if err != nil {
			continue
		}
		if _, err := s.socks[ri][rj].WriteTo(out, net.UDPAddrFromAddrPort(src)); err != nil && !errors.Is(err, net.ErrClosed) {
			s.log.Debug("STUN reply failed", "to", src.String(), "err", err)
		}
	}
}

// answer builds the response to a datagram received on socket (i,j) from
// src and says which socket sends it; nil means no response (not a
// request).
func (s *Server) answer(b []byte, src netip.AddrPort, i, j int) (*Message, int, int) {
	req, err := Parse(b)
	if err != nil || req.Type != BindingRequest {
		if err == nil && req.Type.Class() == ClassRequest {
			// Another method: 400 would do, RFC 8489 says unknown-method
			// requests get an error response too.
			r := &Message{Type: NewType(req.Type.Method(), ClassErrorResponse), TransactionID: req.TransactionID}
			r.Add(AttrErrorCode, AppendErrorCode(nil, 400, "Bad Request: only Binding is served"))
			return r, i, j
		}
		return nil, 0, 0
	}
	var unknown []uint16
	var change uint32
	for _, a := range req.Attributes {
		switch {
		case a.Type == AttrChangeRequest:
			if len(a.Value) != 4 {
				r := &Message{Type: BindingError, TransactionID: req.TransactionID}
				r.Add(AttrErrorCode, AppendErrorCode(nil, 400, "Bad Request: CHANGE-REQUEST must be 4 bytes"))
				return r, i, j
			}
			change = binary.BigEndian.Uint32(a.Value)
		case a.Type == AttrFingerprint, a.Type == AttrSoftware:
		case ComprehensionRequired(a.Type):
			unknown = append(unknown, a.Type)
		}
	}
	if len(unknown) > 0 {
		r := &Message{Type: BindingError, TransactionID: req.TransactionID}
		r.Add(AttrErrorCode, AppendErrorCode(nil, 420, "Unknown Attribute"))
		var v []byte
		for _, t := range unknown {
			v = binary.BigEndian.AppendUint16(v, t)
		}
		r.Add(AttrUnknownAttributes, v)
		return r, i, j
	}
	ri, rj := i, j
	if change&ChangeIP != 0 {
		ri = 1 - i
	}
	if change&ChangePort != 0 {
		rj = 1 - j
	}
	r := &Message{Type: BindingSuccess, TransactionID: req.TransactionID}
	r.Add(AttrXORMappedAddress, AppendXORAddress(nil, src, req.TransactionID))
	r.Add(AttrMappedAddress, AppendAddress(nil, src))
	r.Add(AttrResponseOrigin, AppendAddress(nil, s.addr(ri, rj)))
	r.Add(AttrOtherAddress, AppendAddress(nil, s.addr(1-i, 1-j)))
	r.Add(AttrSoftware, []byte(Software))
	s.log.Debug("STUN binding", "from", src.String(), "on", s.addr(i, j).String(), "reply_from", s.addr(ri, rj).String())
	return r, ri, rj
}

// addrPort converts a UDP address to an unmapped netip.AddrPort.
func addrPort(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.UDPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case nil:
		return netip.AddrPort{}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
