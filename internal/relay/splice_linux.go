package relay

import (
	"errors"
	"net"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// The splice path. *net.TCPConn.ReadFrom splices too, but it takes a pipe
// (two descriptors) before it waits for the source to become readable and
// keeps it for as long as the source stays silent; the pipes go back to a
// sync.Pool that closes them only after two garbage collections. An idle
// relay held six descriptors that way, four of them pipes. Here a direction
// waits for its source without a pipe, takes one only when bytes are ready,
// and gives it back the moment the source runs dry; spare pipes beyond a
// small pool are closed at once. An idle relay holds its two sockets and
// nothing else.

// spliceMax is the most one splice(2) call moves: the size Go's own splice
// path asks for, and the largest pipe an unprivileged process may set
// (/proc/sys/fs/pipe-max-size, 1 MiB by default).
const spliceMax = 1 << 20

// maxSparePipes bounds the pipes kept open for reuse between bursts, for
// the whole process. Beyond it a pipe is closed when its direction runs
// dry: a pipe costs three system calls to make and close, against the
// several it saves per burst only when bursts are frequent.
const maxSparePipes = 16

// pipe is a splice pipe; it is empty whenever it is not in use.
type pipe struct{ r, w int }

var pipes struct {
	mu    sync.Mutex
	spare []*pipe
}

func getPipe() (*pipe, error) {
	pipes.mu.Lock()
	if n := len(pipes.spare); n > 0 {
		p := pipes.spare[n-1]
		pipes.spare = pipes.spare[:n-1]
		pipes.mu.Unlock()
		return p, nil
	}
	pipes.mu.Unlock()
	var fds [2]int
	if err := syscall.Pipe2(fds[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	// A larger pipe lets one call move a whole receive queue; when the
	// limit forbids it the default 64 KiB pipe still works.
	unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, spliceMax)
	return &pipe{r: fds[0], w: fds[1]}, nil
}

// putPipe keeps an empty pipe for reuse or closes it.
func putPipe(p *pipe) {
	pipes.mu.Lock()
	if len(pipes.spare) < maxSparePipes {
		pipes.spare = append(pipes.spare, p)
		pipes.mu.Unlock()
		return
	}
	pipes.mu.Unlock()
	p.close()
}

func (p *pipe) close() {
	syscall.Close(p.r)
	syscall.Close(p.w)
}

// splicer moves src to dst through a pipe inside the kernel.
type splicer struct {
	src, dst     *net.TCPConn
	srcRC, dstRC syscall.RawConn

	p       *pipe // held only while it carries bytes, see fill
	inPipe  int   // bytes in p
	err     error // a splice error, set by fill or drain
	readFn  func(uintptr) bool
	writeFn func(uintptr) bool
}

// newSplicer returns a splicer from src to dst, or nil when either socket
// gives no raw access.
func newSplicer(dst, src *net.TCPConn) *splicer {
	srcRC, err1 := src.SyscallConn()
	dstRC, err2 := dst.SyscallConn()
	if err1 != nil || err2 != nil {
		return nil
	}
	s := &splicer{src: src, dst: dst, srcRC: srcRC, dstRC: dstRC}
	s.readFn, s.writeFn = s.fill, s.drain
	return s
}

// errNoSplice reports that the kernel refused to splice from the source
// before any byte moved (EINVAL): the caller copies through a buffer.
var errNoSplice = errors.New("relay: splice not supported")

// move waits until src has bytes or EOF, and moves what it has to dst. It
// returns the bytes moved and whether src is at EOF. The source's read
// deadline applies to the wait (os.ErrDeadlineExceeded), closing either
// socket ends it (net.ErrClosed).
func (s *splicer) move() (n int64, eof bool, err error) {
	s.err = nil
	s.inPipe = 0
	if rerr := s.srcRC.Read(s.readFn); rerr != nil {
		s.release()
		return 0, false, rerr
	}
	if s.err != nil {
		s.release()
		if errors.Is(s.err, syscall.EINVAL) {
			return 0, false, errNoSplice
		}
		return 0, false, s.opError("read", s.src, s.err)
	}
	if s.inPipe == 0 {
		s.release()
		return 0, true, nil
	}
	moved := s.inPipe
	if werr := s.dstRC.Write(s.writeFn); werr != nil {
		s.discard()
		return int64(moved - s.inPipe), false, werr
	}
	if s.err != nil {
		s.discard()
		return int64(moved - s.inPipe), false, s.opError("write", s.dst, s.err)
	}
	// The pipe stays with this direction while bytes keep coming; fill gives
	// it back as soon as the source has nothing more.
	return int64(moved), false, nil
}

// fill is the raw read callback: splice from the source socket into the
// pipe. It returns false (wait for readability) only when the socket has
// nothing to read, and gives the pipe back before that wait.
func (s *splicer) fill(fd uintptr) bool {
	if s.p == nil {
		p, err := getPipe()
		if err != nil {
			s.err = err
			return true
		}
		s.p = p
	}
	for {
		n, err := syscall.Splice(int(fd), nil, s.p.w, nil, spliceMax, unix.SPLICE_F_NONBLOCK)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			// The pipe is empty, so the socket has nothing: wait without it.
			s.release()
			return false
		case err != nil:
			s.err = err
		default:
			s.inPipe = int(n) // 0 is EOF
		}
		return true
	}
}

// drain is the raw write callback: splice everything in the pipe to the
// destination socket, waiting for writability when its buffer is full.
func (s *splicer) drain(fd uintptr) bool {
	for s.inPipe > 0 {
		n, err := syscall.Splice(s.p.r, nil, int(fd), nil, s.inPipe, unix.SPLICE_F_NONBLOCK)
		switch {
		case n > 0:
			s.inPipe -= int(n)
		case err == syscall.EINTR:
		case err == syscall.EAGAIN:
			return false
		case err != nil:
			s.err = err
			return true
		default:
			// n == 0 without an error cannot happen with bytes in the pipe.
			s.err = syscall.EIO
			return true
		}
	}
	return true
}

// release gives an empty pipe back.
func (s *splicer) release() {
	if s.p != nil {
		putPipe(s.p)
		s.p = nil
	}
}

// discard closes a pipe that may still hold bytes that could not be
// delivered; only an empty pipe is reused.
func (s *splicer) discard() {
	if s.p != nil {
		if s.inPipe == 0 {
			putPipe(s.p)
		} else {
			s.p.close()
		}
		s.p = nil
	}
}

// close gives back the pipe a direction still holds when it ends.
func (s *splicer) close() { s.discard() }

func (s *splicer) opError(op string, c *net.TCPConn, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("splice", err)}
}
