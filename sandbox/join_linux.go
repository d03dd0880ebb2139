package sandbox

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Joining. A Go program cannot setns(2) itself into a user or mount
// namespace (it is multithreaded, and its threads share their filesystem
// context), so a second command does not enter the namespaces from
// outside. The init, which is inside all of them, starts it instead: the
// sandbox's caller listens on a Unix socket, checks who connects, and
// hands the connection to the init, which reads the command and its stdin,
// stdout and stderr (SCM_RIGHTS) from it and reports its end back. Its
// flows go through the same TUN, served by the same caller.

type publication struct {
	l    *net.UnixListener
	path string
	wg   sync.WaitGroup
}

func (p *publication) close() {
	p.l.Close() // removes the socket file
	p.wg.Wait()
	// The directory too, when no other exec's socket is in it: nothing
	// stays behind. (A Publish racing with this retries.)
	os.Remove(filepath.Dir(p.path))
}

// CheckFree returns an error when a running sandbox already answers on the
// socket of name in dir, so that a second one does not start under a name
// it cannot publish. A socket left by a sandbox whose caller was killed
// answers nothing: the name is free, and Publish replaces the socket.
func CheckFree(dir, name string) error {
	path := filepath.Join(dir, name+".sock")
	c, err := net.Dial("unixpacket", path)
	if err != nil {
		return nil
	}
	c.Close()
	return fmt.Errorf("an exec named %q is already running (%s): pick another name, or --join it", name, path)
}

// Publish makes the sandbox joinable by name: Join with the socket it
// returns (dir/name.sock) runs a command inside. Only the command's user
// and root may join. Close removes the socket; a socket left by a sandbox
// whose caller was killed is replaced.
func (s *Sandbox) Publish(dir, name string) (string, error) {
	if err := CheckName(name); err != nil {
		return "", err
	}
	mode := os.FileMode(0o700)
	if os.Getuid() == 0 {
		mode = 0o755 // joiners that are not root must reach the socket
	}
	if err := os.MkdirAll(dir, mode); err != nil {
		return "", fmt.Errorf("sandbox: %w", err)
	}
	path := filepath.Join(dir, name+".sock")
	if _, err := os.Lstat(path); err == nil {
		c, err := net.Dial("unixpacket", path)
		switch {
		case err == nil:
			c.Close()
			return "", fmt.Errorf("an exec named %q is already running (%s)", name, path)
		case errors.Is(err, unix.ECONNREFUSED):
			os.Remove(path) // left by a caller that was killed
		default:
			return "", fmt.Errorf("sandbox: %s exists and is not a sandbox's socket: %w", path, err)
		}
	}
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if errors.Is(err, os.ErrNotExist) {
		// Another exec's Close removed the directory meanwhile.
		if err = os.MkdirAll(dir, mode); err == nil {
			l, err = net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
		}
	}
	if err != nil {
		return "", fmt.Errorf("sandbox: %w", err)
	}
	l.SetUnlinkOnClose(true)
	if os.Getuid() == 0 {
		// Anyone may connect; admit checks who it is.
		if err := os.Chmod(path, 0o666); err != nil {
			l.Close()
			return "", fmt.Errorf("sandbox: %w", err)
		}
	}
	p := &publication{l: l, path: path}
	s.mu.Lock()
	if s.pub != nil {
		s.mu.Unlock()
		l.Close()
		return "", errors.New("sandbox: already published")
	}
	s.pub = p
	s.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		s.serveJoins(l)
	}()
	s.log.Debug("sandbox joinable", "socket", path)
	return path, nil
}

func (s *Sandbox) serveJoins(l *net.UnixListener) {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			return
		}
		cred, err := s.admit(c)
		if err != nil {
			(&channel{c: c}).send(errorMsg(err))
			c.Close()
			s.log.Warn("join refused", "err", err)
			continue
		}
		f, err := c.File()
		c.Close()
		if err != nil {
			continue
		}
		if err := s.ctl.send(message{Op: opJoin, Cred: cred}, int(f.Fd())); err != nil {
			s.log.Debug("handing a join to the init", "err", err)
		}
		f.Close()
	}
}

// admit checks that the peer may join: the command's user or root. It
// returns who the joined command runs as: nil when the sandbox is rootless
// (its user, necessarily) or the joiner is root (it says); else the
// joiner's own uid, gid and groups.
func (s *Sandbox) admit(c *net.UnixConn) (*Cred, error) {
	uc, err := peerCred(c)
	if err != nil {
		return nil, err
	}
	owner := uint32(os.Getuid())
	if !s.spec.Rootless {
		owner = 0
		if s.spec.Cred != nil {
			owner = s.spec.Cred.UID
		}
	}
	if uc.Uid != 0 && uc.Uid != owner {
		return nil, fmt.Errorf("uid %d may not join this exec: only uid %d and root may", uc.Uid, owner)
	}
	if s.spec.Rootless || uc.Uid == 0 {
		return nil, nil
	}
	groups, err := processGroups(int(uc.Pid))
	if err != nil {
		return nil, fmt.Errorf("groups of the joining process %d: %w", uc.Pid, err)
	}
	return &Cred{UID: uc.Uid, GID: uc.Gid, Groups: groups}, nil
}

func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var uc *unix.Ucred
	var uerr error
	if err := rc.Control(func(fd uintptr) {
		uc, uerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return uc, uerr
}

// processGroups reads the supplementary groups of a process.
func processGroups(pid int) ([]uint32, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "Groups:")
		if !ok {
			continue
		}
		var groups []uint32
		for _, g := range strings.Fields(rest) {
			n, err := strconv.ParseUint(g, 10, 32)
			if err != nil {
				return nil, err
			}
			groups = append(groups, uint32(n))
		}
		return groups, nil
	}
	return nil, errors.New("no Groups line")
}

// Joined is a command running in another process's sandbox.
type Joined struct {
	ch  *channel
	pid int
}

// Join runs a command in the sandbox published at socket and returns once
// it runs.
func Join(ctx context.Context, socket string, js JoinSpec) (*Joined, error) {
	if len(js.Args) == 0 {
		return nil, errors.New("sandbox: no command")
	}
	path := js.Path
	if path == "" {
		var err error
		if path, err = LookPath(js.Args[0], js.Env); err != nil {
			return nil, err
		}
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unixpacket", socket)
	if err != nil {
		if errors.Is(err, unix.ECONNREFUSED) {
			return nil, fmt.Errorf("the exec behind %s is not running any more: %w", socket, err)
		}
		return nil, err
	}
	uc := c.(*net.UnixConn)
	// The socket may only be served by us or root: anyone else would get
	// our terminal.
	srv, err := peerCred(uc)
	if err != nil {
		uc.Close()
		return nil, err
	}
	if srv.Uid != 0 && int(srv.Uid) != os.Getuid() {
		uc.Close()
		return nil, fmt.Errorf("%s is served by uid %d, neither root nor you: not joining", socket, srv.Uid)
	}
	ch := &channel{c: uc}
	stdio := []*os.File{js.Stdin, js.Stdout, js.Stderr}
	fds := make([]int, 3)
	for i, f := range stdio {
		if f == nil {
			null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
			if err != nil {
				uc.Close()
				return nil, err
			}
			defer null.Close()
			f = null
		}
		fds[i] = int(f.Fd())
	}
	if err := ch.send(message{Op: opRun, Spawn: &spawnMsg{Path: path, Args: js.Args, Env: js.Env, Dir: js.Dir, Cred: js.Cred}}, fds...); err != nil {
		// A refused joiner finds the reason waiting, and the socket
		// closed under its request.
		uc.SetReadDeadline(time.Now().Add(time.Second))
		if m, rfds, rerr := ch.recv(); rerr == nil && m.Op == opError {
			closeFDs(rfds)
			err = m.err()
		}
		uc.Close()
		return nil, fmt.Errorf("joining %s: %w", socket, err)
	}
	stop := context.AfterFunc(ctx, func() { uc.Close() })
	m, rfds, err := ch.recv()
	stop()
	closeFDs(rfds)
	switch {
	case ctx.Err() != nil:
		uc.Close()
		return nil, ctx.Err()
	case err != nil:
		uc.Close()
		return nil, fmt.Errorf("joining %s: %w", socket, err)
	case m.Op == opError:
		uc.Close()
		return nil, fmt.Errorf("starting %s: %w", js.Args[0], m.err())
	case m.Op != opStarted:
		uc.Close()
		return nil, fmt.Errorf("joining %s: unexpected %q", socket, m.Op)
	}
	return &Joined{ch: ch, pid: m.Pid}, nil
}

// Signal passes sig to the joined command.
func (j *Joined) Signal(sig syscall.Signal) error {
	return j.ch.send(message{Op: opSignal, Signal: int(sig)})
}

// Wait returns how the joined command ended. When the sandbox ended first
// (and the kernel killed the command), the error wraps ErrEnded.
func (j *Joined) Wait() (Exit, error) {
	for {
		m, fds, err := j.ch.recv()
		closeFDs(fds)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return Exit{Signal: unix.SIGKILL}, ErrEnded
			}
			return Exit{}, err
		}
		if m.Op == opExit && m.Exit != nil {
			return *m.Exit, nil
		}
	}
}

// Close drops the connection; a command still running is hung up.
func (j *Joined) Close() error { return j.ch.close() }
