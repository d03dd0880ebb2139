package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// The caller and the init talk over a SOCK_SEQPACKET socketpair: one JSON
// message per datagram, descriptors riding along as SCM_RIGHTS. A joiner
// talks to the init the same way over the connection the caller accepted
// and handed in.

// Message ops.
const (
	opSetup   = "setup"   // caller -> init: build the namespace (Setup)
	opReady   = "ready"   // init -> caller: done; fds: TUN, sock_diag
	opRun     = "run"     // caller or joiner -> init: start a command (Spawn); joiner fds: stdin, stdout, stderr
	opStarted = "started" // init -> caller or joiner: the command runs (Pid, inside)
	opSignal  = "signal"  // caller or joiner -> init: pass Signal to the command
	opExit    = "exit"    // init -> caller or joiner: the command ended (Exit)
	opJoin    = "join"    // caller -> init: a joiner's connection (fd), its command runs as Cred
	opError   = "error"   // init -> caller or joiner: Err (and Errno)
)

type message struct {
	Op     string    `json:"op"`
	Setup  *setupMsg `json:"setup,omitempty"`
	Spawn  *spawnMsg `json:"spawn,omitempty"`
	Cred   *Cred     `json:"cred,omitempty"`
	Signal int       `json:"signal,omitempty"`
	Pid    int       `json:"pid,omitempty"`
	Exit   *Exit     `json:"exit,omitempty"`
	Tun    string    `json:"tun,omitempty"`
	Err    string    `json:"err,omitempty"`
	Errno  int       `json:"errno,omitempty"`
	Notes  []string  `json:"notes,omitempty"` // what setup skipped, for the caller's log
}

type setupMsg struct {
	Tun        TunSpec  `json:"tun"`
	ResolvConf string   `json:"resolv_conf,omitempty"`
	ResolvPath string   `json:"resolv_path,omitempty"` // "" is /etc/resolv.conf
	Mask       []string `json:"mask,omitempty"`
	Rootless   bool     `json:"rootless,omitempty"`
}

type spawnMsg struct {
	Path string   `json:"path"`
	Args []string `json:"args"`
	Env  []string `json:"env"`
	Dir  string   `json:"dir,omitempty"`
	Cred *Cred    `json:"cred,omitempty"` // root path only
}

// errorMsg carries err to the other side, its errno when there is one, so
// errors.Is(err, os.ErrPermission) still works there.
func errorMsg(err error) message {
	m := message{Op: opError, Err: err.Error()}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		m.Errno = int(errno)
	}
	return m
}

// remoteError is an error that happened on the other side.
type remoteError struct {
	msg   string
	errno syscall.Errno
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error {
	if e.errno == 0 {
		return nil
	}
	return e.errno
}

func (m message) err() error {
	return &remoteError{msg: m.Err, errno: syscall.Errno(m.Errno)}
}

const (
	maxMessage = 512 << 10 // argv and environment included
	maxFDs     = 4
)

// channel is one end of a SEQPACKET connection. Sends are serialised;
// recv is used by one goroutine at a time.
type channel struct {
	c   *net.UnixConn
	wmu sync.Mutex
	buf []byte
	oob []byte
}

// newChannel takes ownership of f, a SOCK_SEQPACKET socket.
func newChannel(f *os.File) (*channel, error) {
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("sandbox: control socket is a %T, not a Unix socket", c)
	}
	return &channel{c: uc}, nil
}

// socketpair makes a connected SEQPACKET pair: a channel for us and the
// other end as a file to hand to a child.
func socketpair() (*channel, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("sandbox: socketpair: %w", err)
	}
	growBuffers(fds[0])
	growBuffers(fds[1])
	ch, err := newChannel(os.NewFile(uintptr(fds[0]), "sandbox-control"))
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	return ch, os.NewFile(uintptr(fds[1]), "sandbox-control"), nil
}

// growBuffers lets a datagram carry a large environment; the kernel caps
// the request at net.core.wmem_max, which is enough for everything but
// environments of hundreds of kilobytes.
func growBuffers(fd int) {
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, maxMessage)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, maxMessage)
}

func (ch *channel) send(m message, fds ...int) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	ch.wmu.Lock()
	defer ch.wmu.Unlock()
	if _, _, err := ch.c.WriteMsgUnix(b, oob, nil); err != nil {
		if errors.Is(err, unix.EMSGSIZE) {
			return fmt.Errorf("sandbox: message of %d bytes too large for the control socket (a very large environment?): %w", len(b), err)
		}
		return err
	}
	return nil
}

// recv reads one message and the descriptors that came with it (already
// close-on-exec). io.EOF when the other side is gone.
func (ch *channel) recv() (message, []int, error) {
	if ch.buf == nil {
		ch.buf = make([]byte, maxMessage)
		ch.oob = make([]byte, unix.CmsgSpace(4*maxFDs))
	}
	n, oobn, flags, _, err := ch.c.ReadMsgUnix(ch.buf, ch.oob)
	if errors.Is(err, unix.ECONNRESET) {
		// The peer closed with our message unread. The kernel reports that
		// before the messages it sent us, and only once: read those.
		n, oobn, flags, _, err = ch.c.ReadMsgUnix(ch.buf, ch.oob)
	}
	var fds []int
	if oobn > 0 {
		fds = parseRights(ch.oob[:oobn])
	}
	if err != nil {
		closeFDs(fds)
		if errors.Is(err, net.ErrClosed) || errors.Is(err, unix.ECONNRESET) {
			err = io.EOF
		}
		return message{}, nil, err
	}
	if n == 0 && oobn == 0 {
		return message{}, nil, io.EOF // SEQPACKET: the peer closed
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		closeFDs(fds)
		return message{}, nil, errors.New("sandbox: control message truncated")
	}
	var m message
	if err := json.Unmarshal(ch.buf[:n], &m); err != nil {
		closeFDs(fds)
		return message{}, nil, fmt.Errorf("sandbox: bad control message: %w", err)
	}
	return m, fds, nil
}

func (ch *channel) close() error { return ch.c.Close() }

func parseRights(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for _, m := range msgs {
		if f, err := unix.ParseUnixRights(&m); err == nil {
			fds = append(fds, f...)
		}
	}
	return fds
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
