package procinfo

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Netlink sock_diag constants not in x/sys/unix (linux/inet_diag.h).
const (
	inetDiagReqBytecode = 1 // INET_DIAG_REQ_BYTECODE attribute
	inetDiagBCSGE       = 2 // INET_DIAG_BC_S_GE
	inetDiagBCSLE       = 3 // INET_DIAG_BC_S_LE
	sizeofReqV2         = 56
	sizeofDiagMsg       = 72
	tcpListen           = 10 // TCP_LISTEN state

	maxDiagMessages = 1 << 16         // sockets read from one dump at most
	diagTimeout     = 2 * time.Second // one netlink exchange at most
	maxInodeCache   = 1 << 16
)

type sysFinder struct {
	proc string // /proc

	diag *diagConn // nil: this process's network namespace

	scanMu sync.Mutex // one /proc scan at a time
	mu     sync.Mutex
	inodes map[uint32]pidFD // socket inode -> holder, from earlier scans
}

type pidFD struct{ pid, fd string }

func newSysFinder() *sysFinder {
	return &sysFinder{proc: "/proc", inodes: map[uint32]pidFD{}}
}

// NewFinderIn is NewFinder for the sockets of another network namespace
// (an exec sandbox's): diag is a NETLINK_SOCK_DIAG socket opened there, and
// every kernel query goes through it, one at a time. Processes are still
// found in this process's /proc, so they must live in its PID namespace or
// one below it. The Finder owns diag; Close closes it.
func NewFinderIn(ttl time.Duration, diag *os.File) *Finder {
	f := NewFinder(ttl)
	f.sys.diag = &diagConn{f: diag}
	return f
}

func (s *sysFinder) close() error {
	if s.diag == nil {
		return nil
	}
	return s.diag.f.Close()
}

func (s *sysFinder) owner(network string, addr netip.AddrPort) (Owner, error) {
	return s.find(network, addr, netip.AddrPort{})
}

func (s *sysFinder) find(network string, src, dst netip.AddrPort) (Owner, error) {
	o := Owner{PID: -1, UID: -1}
	inode, uid, err := findSocket(s.diag, network, src, dst)
	if err != nil {
		return o, err
	}
	o.UID = uid
	pid, err := s.pidOf(inode)
	if err != nil {
		return o, err
	}
	if o.PID, err = strconv.Atoi(pid); err != nil {
		return o, fmt.Errorf("socket inode %d, pid %q: %w", inode, pid, err)
	}
	exe, err := os.Readlink(s.proc + "/" + pid + "/exe")
	if err != nil {
		return o, fmt.Errorf("socket inode %d, pid %s: %w: %w", inode, pid, ErrNoProcess, err)
	}
	o.Path = strings.TrimSuffix(exe, " (deleted)")
	return o, nil
}

// diagSock is one socket from a sock_diag dump.
type diagSock struct {
	family uint8
	state  uint8
	local  netip.Addr
	port   uint16
	uid    int
	inode  uint32
}

// findSocket returns the inode and uid of the socket bound to src. For TCP
// with a known dst it asks the kernel for that one connection (a hash
// lookup); otherwise it dumps the sockets on src's port (for TCP the kernel
// walks its whole established table, a few hundred microseconds), preferring
// a socket bound to exactly src over a wildcard one, and a connected socket
// over a listener.
func findSocket(d *diagConn, network string, src, dst netip.AddrPort) (uint32, int, error) {
	proto := uint8(unix.IPPROTO_TCP)
	if network == "udp" {
		proto = unix.IPPROTO_UDP
	}
	a := src.Addr()
	if proto == unix.IPPROTO_TCP && dst.IsValid() && dst.Addr().Is4() == a.Is4() {
		family := uint8(unix.AF_INET6)
		if a.Is4() {
			family = unix.AF_INET
		}
		if s, err := diagExact(d, family, proto, src, dst); err == nil && s.inode != 0 {
			return s.inode, s.uid, nil
		}
	}
	type query struct {
		family uint8
		exact  netip.Addr
		any    netip.Addr
	}
	queries := []query{{unix.AF_INET6, a, netip.IPv6Unspecified()}}
	if a.Is4() {
		queries = []query{
			{unix.AF_INET, a, netip.IPv4Unspecified()},
			{unix.AF_INET6, netip.AddrFrom16(a.As16()), netip.IPv6Unspecified()}, // dual-stack sockets
		}
	}
	var errs []error
	for _, q := range queries {
		socks, err := diagDump(d, q.family, proto, src.Port())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		best, bestScore := diagSock{}, -1
		for _, s := range socks {
			if s.inode == 0 || s.port != src.Port() { // TIME_WAIT and the like have no file behind them
				continue
			}
			score := 0
			switch s.local {
			case q.exact:
				score = 2
			case q.any:
			default:
				continue
			}
			if s.state != tcpListen || proto != unix.IPPROTO_TCP {
				score++
			}
			if score > bestScore {
				best, bestScore = s, score
			}
		}
		if bestScore >= 0 {
			return best.inode, best.uid, nil
		}
	}
	if len(errs) == len(queries) {
		return 0, -1, errors.Join(errs...)
	}
	return 0, -1, ErrNotFound
}

// diagExact asks for the one socket with local address src and remote
// address dst.
func diagExact(d *diagConn, family, proto uint8, src, dst netip.AddrPort) (diagSock, error) {
	req := diagRequest(family, proto, 0)
	req = req[:unix.NLMSG_HDRLEN+sizeofReqV2] // no bytecode
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST)
	id := req[unix.NLMSG_HDRLEN+8:]
	binary.BigEndian.PutUint16(id[0:], src.Port())
	binary.BigEndian.PutUint16(id[2:], dst.Port())
	if family == unix.AF_INET {
		a, b := src.Addr().As4(), dst.Addr().As4()
		copy(id[4:], a[:])
		copy(id[20:], b[:])
	} else {
		a, b := src.Addr().As16(), dst.Addr().As16()
		copy(id[4:], a[:])
		copy(id[20:], b[:])
	}
	socks, err := d.exchange(req, family)
	if err != nil {
		return diagSock{}, err
	}
	if len(socks) == 0 {
		return diagSock{}, ErrNotFound
	}
	return socks[0], nil
}

// diagDump lists the sockets of family and proto whose local port is port,
// filtered in the kernel with sock_diag bytecode.
func diagDump(d *diagConn, family, proto uint8, port uint16) ([]diagSock, error) {
	return d.exchange(diagRequest(family, proto, port), family)
}

// diagConn is where sock_diag requests go. A nil one opens a socket for
// each request, in this process's network namespace; otherwise f is a
// socket opened in another namespace, shared by the requests in turn.
type diagConn struct {
	mu  sync.Mutex
	f   *os.File
	seq uint32
}

// exchange sends a sock_diag request and collects the sockets of family in
// the reply, up to NLMSG_DONE, an error, or (for a single-socket request)
// the first answer.
func (d *diagConn) exchange(req []byte, family uint8) ([]diagSock, error) {
	if d == nil {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
		if err != nil {
			return nil, fmt.Errorf("sock_diag socket: %w", err)
		}
		defer unix.Close(fd)
		return diagExchange(fd, req, family)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	// A fresh sequence number: the answer to an earlier request that
	// timed out may still arrive, and is skipped.
	d.seq++
	binary.NativeEndian.PutUint32(req[8:], d.seq)
	rc, err := d.f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("sock_diag socket: %w", err)
	}
	var socks []diagSock
	var xerr error
	if err := rc.Control(func(fd uintptr) { socks, xerr = diagExchange(int(fd), req, family) }); err != nil {
		return nil, fmt.Errorf("sock_diag socket: %w", err)
	}
	return socks, xerr
}

// diagExchange is one request and its answer on the netlink socket fd.
// Messages whose sequence number is not the request's are skipped.
func diagExchange(fd int, req []byte, family uint8) ([]diagSock, error) {
	dump := binary.NativeEndian.Uint16(req[6:])&unix.NLM_F_DUMP != 0
	seq := binary.NativeEndian.Uint32(req[8:])
	tv := unix.NsecToTimeval(diagTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return nil, fmt.Errorf("sock_diag timeout: %w", err)
	}
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sock_diag request: %w", err)
	}
	deadline := time.Now().Add(diagTimeout)
	// The kernel sizes dump batches to fit the reader's buffer; a
	// truncated datagram is reported rather than misread.
	buf := make([]byte, 8*1024)
	var out []diagSock
	for n := 0; n < maxDiagMessages; {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("sock_diag: no end of dump within %v", diagTimeout)
		}
		nr, _, flags, _, err := unix.Recvmsg(fd, buf, nil, 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return nil, fmt.Errorf("sock_diag receive: %w", err)
		}
		if flags&unix.MSG_TRUNC != 0 {
			return nil, fmt.Errorf("sock_diag: reply larger than %d bytes", len(buf))
		}
		msgs, err := parseNetlink(buf[:nr])
		if err != nil {
			return nil, fmt.Errorf("sock_diag reply: %w", err)
		}
		for _, m := range msgs {
			n++
			if m.seq != seq {
				continue
			}
			switch m.typ {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.data) < 4 {
					return nil, errors.New("sock_diag: short error message")
				}
				if errno := unix.Errno(-int32(binary.NativeEndian.Uint32(m.data))); errno != 0 {
					if errno == unix.ENOENT && !dump {
						return nil, ErrNotFound
					}
					return nil, fmt.Errorf("sock_diag: %w", errno)
				}
				return out, nil
			case unix.SOCK_DIAG_BY_FAMILY:
				// A single-socket answer may be a dual-stack socket of the
				// other family.
				if s, ok := parseDiagMsg(m.data); ok && (s.family == family || !dump) {
					out = append(out, s)
				}
				if !dump {
					return out, nil
				}
			}
		}
	}
	return nil, fmt.Errorf("sock_diag: more than %d sockets on one port", maxDiagMessages)
}

type nlMsg struct {
	typ  uint16
	seq  uint32
	data []byte
}

// parseNetlink splits a datagram into netlink messages.
func parseNetlink(b []byte) ([]nlMsg, error) {
	var out []nlMsg
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return nil, fmt.Errorf("bad netlink message length %d of %d", l, len(b))
		}
		out = append(out, nlMsg{typ: binary.NativeEndian.Uint16(b[4:]), seq: binary.NativeEndian.Uint32(b[8:]), data: b[unix.NLMSG_HDRLEN:l]})
		l = (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
		if l >= len(b) {
			break
		}
		b = b[l:]
	}
	return out, nil
}

// diagRequest builds an inet_diag_req_v2 dump of all states, with bytecode
// keeping only sockets whose local port is port (S_GE port, S_LE port:
// understood by every kernel with sock_diag).
func diagRequest(family, proto uint8, port uint16) []byte {
	const bcLen = 16
	const attrLen = 4 + bcLen
	total := unix.NLMSG_HDRLEN + sizeofReqV2 + attrLen
	b := make([]byte, total)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(total))
	ne.PutUint16(b[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(b[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(b[8:], 1) // seq
	r := b[unix.NLMSG_HDRLEN:]
	r[0], r[1] = family, proto
	ne.PutUint32(r[4:], 0xffffffff) // all states
	// id (r[8:56]) stays zero except the cookie: INET_DIAG_NOCOOKIE.
	ne.PutUint32(r[48:], 0xffffffff)
	ne.PutUint32(r[52:], 0xffffffff)
	a := r[sizeofReqV2:]
	ne.PutUint16(a[0:], attrLen)
	ne.PutUint16(a[2:], inetDiagReqBytecode)
	bc := a[4:]
	// op 1: sport >= port ? go on to op 2 : jump past the end (reject)
	bc[0], bc[1] = inetDiagBCSGE, 8
	ne.PutUint16(bc[2:], bcLen+4)
	ne.PutUint16(bc[6:], port)
	// op 2: sport <= port ? run off the end (accept) : jump past it (reject)
	bc[8], bc[9] = inetDiagBCSLE, 8
	ne.PutUint16(bc[10:], 8+4)
	ne.PutUint16(bc[14:], port)
	return b
}

// parseDiagMsg decodes an inet_diag_msg.
func parseDiagMsg(d []byte) (diagSock, bool) {
	if len(d) < sizeofDiagMsg {
		return diagSock{}, false
	}
	s := diagSock{family: d[0], state: d[1], port: binary.BigEndian.Uint16(d[4:])}
	switch s.family {
	case unix.AF_INET:
		s.local = netip.AddrFrom4([4]byte(d[8:12]))
	case unix.AF_INET6:
		s.local = netip.AddrFrom16([16]byte(d[8:24]))
	default:
		return diagSock{}, false
	}
	s.uid = int(binary.NativeEndian.Uint32(d[64:]))
	s.inode = binary.NativeEndian.Uint32(d[68:])
	return s, true
}

// pidOf finds the process holding socket inode: from the cache if the
// remembered fd still points at it, else by scanning /proc.
func (s *sysFinder) pidOf(inode uint32) (string, error) {
	if pid, ok := s.cached(inode); ok {
		return pid, nil
	}
	s.scanMu.Lock()
	defer s.scanMu.Unlock()
	if pid, ok := s.cached(inode); ok { // found by a scan we waited for
		return pid, nil
	}
	pid, err := s.scan(inode)
	if err != nil {
		return "", fmt.Errorf("socket inode %d: %w", inode, err)
	}
	return pid, nil
}

func (s *sysFinder) cached(inode uint32) (string, bool) {
	s.mu.Lock()
	h, ok := s.inodes[inode]
	s.mu.Unlock()
	if !ok {
		return "", false
	}
	if link, err := os.Readlink(s.proc + "/" + h.pid + "/fd/" + h.fd); err == nil && link == socketLink(inode) {
		return h.pid, true
	}
	s.mu.Lock()
	delete(s.inodes, inode)
	s.mu.Unlock()
	return "", false
}

func socketLink(inode uint32) string { return "socket:[" + strconv.FormatUint(uint64(inode), 10) + "]" }

// scan walks /proc/*/fd until it finds inode, remembering every socket it
// passes so later lookups of those hit the cache.
func (s *sysFinder) scan(inode uint32) (string, error) {
	d, err := os.Open(s.proc)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrNoProcess, err)
	}
	pids, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrNoProcess, err)
	}
	seen := map[uint32]pidFD{}
	defer func() {
		s.mu.Lock()
		if len(s.inodes)+len(seen) > maxInodeCache {
			clear(s.inodes)
		}
		for k, v := range seen {
			s.inodes[k] = v
		}
		s.mu.Unlock()
	}()
	want := socketLink(inode)
	for _, pid := range pids {
		if pid == "" || pid[0] < '0' || pid[0] > '9' {
			continue
		}
		fdDir := s.proc + "/" + pid + "/fd"
		fd, err := os.Open(fdDir)
		if err != nil {
			continue // gone, or not ours to read
		}
		fds, _ := fd.Readdirnames(-1)
		fd.Close()
		for _, n := range fds {
			link, err := os.Readlink(fdDir + "/" + n)
			if err != nil || !strings.HasPrefix(link, "socket:[") {
				continue
			}
			if link == want {
				seen[inode] = pidFD{pid, n}
				return pid, nil
			}
			if len(seen) < maxInodeCache && len(link) > len("socket:[]") && link[len(link)-1] == ']' {
				if v, err := strconv.ParseUint(link[len("socket:["):len(link)-1], 10, 32); err == nil {
					seen[uint32(v)] = pidFD{pid, n}
				}
			}
		}
	}
	return "", ErrNoProcess
}
