package sandbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Sandbox is a running sandbox, seen from the caller.
type Sandbox struct {
	spec Spec
	path string // the command's executable
	log  *slog.Logger
	init *exec.Cmd
	ctl  *channel

	mu      sync.Mutex
	tunFD   int      // -1 once taken
	diag    *os.File // nil once taken
	tunName string
	notes   []string
	ran     bool
	exit    *Exit

	started    chan message  // opStarted or opError after Run
	readerDone chan struct{} // the control reader has seen the init's end
	initDone   chan struct{} // the init is reaped: the whole PID namespace is gone
	initErr    error

	pub *publication
}

// Start builds the sandbox: it starts the init in new namespaces and
// returns once the TUN exists inside and its descriptor is here (TakeTUN).
// The command does not run before Run. ctx bounds the start only.
func Start(ctx context.Context, spec Spec) (*Sandbox, error) {
	log := spec.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if len(spec.Args) == 0 {
		return nil, errors.New("sandbox: no command")
	}
	if spec.Rootless && spec.Cred != nil {
		return nil, errors.New("sandbox: a rootless sandbox runs the command as the caller; Cred needs root")
	}
	path := spec.Path
	if path == "" {
		var err error
		if path, err = LookPath(spec.Args[0], spec.Env); err != nil {
			return nil, err
		}
	}
	exe := spec.Exe
	if exe == "" {
		exe = "/proc/self/exe"
	}
	ctl, child, err := socketpair()
	if err != nil {
		return nil, err
	}
	sys := &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWNET | unix.CLONE_NEWNS | unix.CLONE_NEWPID}
	if spec.Rootless {
		uid, gid := os.Getuid(), os.Getgid()
		sys.Cloneflags |= unix.CLONE_NEWUSER
		sys.UidMappings = []syscall.SysProcIDMap{{ContainerID: uid, HostID: uid, Size: 1}}
		sys.GidMappings = []syscall.SysProcIDMap{{ContainerID: gid, HostID: gid, Size: 1}}
		// The init keeps its uid (no fake root) and gets what it needs
		// to build the namespace through ambient capabilities, which
		// survive its execve; it drops them for the command.
		sys.AmbientCaps = []uintptr{unix.CAP_NET_ADMIN, unix.CAP_SYS_ADMIN, unix.CAP_SETPCAP}
	}
	init := &exec.Cmd{
		Path:        exe,
		Args:        []string{"tunsocks-sandbox", InitArg},
		Env:         []string{}, // the command's environment travels in Run
		Stdin:       spec.Stdin,
		Stdout:      spec.Stdout,
		Stderr:      spec.Stderr,
		ExtraFiles:  []*os.File{child},
		SysProcAttr: sys,
	}
	err = init.Start()
	child.Close()
	if err != nil {
		ctl.close()
		return nil, fmt.Errorf("sandbox: starting the namespaces: %w", err)
	}
	s := &Sandbox{
		spec: spec, path: path, log: log, init: init, ctl: ctl, tunFD: -1,
		started: make(chan message, 1), readerDone: make(chan struct{}), initDone: make(chan struct{}),
	}
	go func() {
		s.initErr = init.Wait()
		close(s.initDone)
	}()
	if err := s.setup(ctx); err != nil {
		s.Close()
		return nil, err
	}
	go s.read()
	log.Debug("sandbox ready", "init", init.Process.Pid, "tun", s.tunName, "rootless", spec.Rootless, "notes", s.notes)
	return s, nil
}

// setup sends the namespace's description and waits for the descriptors.
func (s *Sandbox) setup(ctx context.Context) error {
	mask := s.spec.Mask
	err := s.ctl.send(message{Op: opSetup, Setup: &setupMsg{
		Tun: s.spec.Tun, ResolvConf: s.spec.ResolvConf, ResolvPath: s.spec.resolvPath, Mask: mask, Rootless: s.spec.Rootless,
	}})
	if err != nil {
		return fmt.Errorf("sandbox: talking to the init: %w", err)
	}
	type reply struct {
		m   message
		fds []int
		err error
	}
	rc := make(chan reply, 1)
	go func() {
		m, fds, err := s.ctl.recv()
		rc <- reply{m, fds, err}
	}()
	var r reply
	select {
	case r = <-rc:
	case <-ctx.Done():
		s.init.Process.Kill()
		r = <-rc
		closeFDs(r.fds)
		return ctx.Err()
	}
	if r.err != nil {
		<-s.initDone
		return fmt.Errorf("sandbox: the init ended while building the namespaces (%v): %w", s.initErr, r.err)
	}
	switch {
	case r.m.Op == opError:
		closeFDs(r.fds)
		return r.m.err()
	case r.m.Op != opReady || len(r.fds) != 2:
		closeFDs(r.fds)
		return fmt.Errorf("sandbox: unexpected %q from the init", r.m.Op)
	}
	s.tunFD = r.fds[0]
	s.diag = os.NewFile(uintptr(r.fds[1]), "sock_diag")
	s.tunName, s.notes = r.m.Tun, r.m.Notes
	return nil
}

// read takes the init's messages after setup.
func (s *Sandbox) read() {
	defer close(s.readerDone)
	for {
		m, fds, err := s.ctl.recv()
		closeFDs(fds)
		if err != nil {
			return
		}
		switch m.Op {
		case opStarted, opError:
			select {
			case s.started <- m:
			default:
			}
		case opExit:
			if m.Exit != nil {
				s.mu.Lock()
				s.exit = m.Exit
				s.mu.Unlock()
			}
		}
	}
}

// TakeTUN returns the TUN's descriptor, close-on-exec, for tun.Open with
// Config.FD; the caller owns it from now on. -1 when already taken.
func (s *Sandbox) TakeTUN() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	fd := s.tunFD
	s.tunFD = -1
	return fd
}

// TakeSockDiag returns a NETLINK_SOCK_DIAG socket opened inside the
// sandbox's network namespace (procinfo.NewFinderIn looks the command's
// sockets up through it); the caller owns it. nil when already taken.
func (s *Sandbox) TakeSockDiag() *os.File {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.diag
	s.diag = nil
	return f
}

// TunName is the TUN's name inside the sandbox.
func (s *Sandbox) TunName() string { return s.tunName }

// Notes are what building the sandbox left out (a /proc of its own that
// could not be mounted, a masked path that was not a directory).
func (s *Sandbox) Notes() []string { return s.notes }

// Pid is the init's process id here; the command is its child.
func (s *Sandbox) Pid() int { return s.init.Process.Pid }

// Run starts the command. It returns once the command runs, or with the
// reason it could not start (wrapping ENOENT or EACCES for an executable
// that is missing or not executable).
func (s *Sandbox) Run() error {
	s.mu.Lock()
	if s.ran {
		s.mu.Unlock()
		return errors.New("sandbox: Run called twice")
	}
	s.ran = true
	s.mu.Unlock()
	var cred *Cred
	if !s.spec.Rootless {
		cred = s.spec.Cred
	}
	err := s.ctl.send(message{Op: opRun, Spawn: &spawnMsg{
		Path: s.path, Args: s.spec.Args, Env: s.spec.Env, Dir: s.spec.Dir, Cred: cred,
	}})
	if err != nil {
		return fmt.Errorf("sandbox: talking to the init: %w", err)
	}
	var m message
	select {
	case m = <-s.started:
	case <-s.readerDone:
		// read passes the start on before it ends: a command that ended
		// at once, and the init with it, has started all the same.
		select {
		case m = <-s.started:
		default:
			<-s.initDone
			return fmt.Errorf("sandbox: the init ended before the command started: %v", s.initErr)
		}
	}
	if m.Op == opError {
		return fmt.Errorf("starting %s: %w", s.spec.Args[0], m.err())
	}
	s.log.Debug("sandbox command started", "path", s.path, "pid_inside", m.Pid)
	return nil
}

// Signal passes sig to the command (not to its children: a shell passes it
// on as it sees fit).
func (s *Sandbox) Signal(sig syscall.Signal) error {
	return s.ctl.send(message{Op: opSignal, Signal: int(sig)})
}

// Forward passes on a signal the caller received, unless the terminal sent
// it and so the command has it already: the command shares the caller's
// process group, and a terminal signals the whole foreground group on ^C,
// ^\ and window changes. Other signals (and these ones sent with kill(1),
// or while the caller is not in the foreground) are passed on.
func (s *Sandbox) Forward(sig syscall.Signal) error {
	switch sig {
	case unix.SIGINT, unix.SIGQUIT, unix.SIGWINCH:
		if inForeground() {
			return nil
		}
	}
	return s.Signal(sig)
}

// inForeground reports whether this process's group is the foreground
// group of its controlling terminal.
func inForeground() bool {
	fd, err := unix.Open("/dev/tty", unix.O_RDONLY|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false // no controlling terminal
	}
	defer unix.Close(fd)
	pgrp, err := unix.IoctlGetInt(fd, unix.TIOCGPGRP)
	return err == nil && pgrp == unix.Getpgrp()
}

// Done is closed when the init has ended, and with it everything that ran
// in the PID namespace.
func (s *Sandbox) Done() <-chan struct{} { return s.initDone }

// Wait waits until the command has ended and everything it left in the
// sandbox is gone, and returns how the command ended.
func (s *Sandbox) Wait() (Exit, error) {
	<-s.initDone
	<-s.readerDone
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.exit == nil {
		return Exit{}, fmt.Errorf("sandbox: the init ended without the command's status: %v", s.initErr)
	}
	return *s.exit, nil
}

// Kill ends the sandbox at once: the init is killed, and the kernel kills
// everything else in its PID namespace.
func (s *Sandbox) Kill() {
	select {
	case <-s.initDone:
	default:
		s.init.Process.Kill()
	}
}

// Close kills what still runs, waits for it, and releases what was not
// taken. Idempotent.
func (s *Sandbox) Close() error {
	s.Kill()
	<-s.initDone
	s.ctl.close()
	s.mu.Lock()
	if s.tunFD >= 0 {
		unix.Close(s.tunFD)
		s.tunFD = -1
	}
	if s.diag != nil {
		s.diag.Close()
		s.diag = nil
	}
	pub := s.pub
	s.pub = nil
	s.mu.Unlock()
	if pub != nil {
		pub.close()
	}
	return nil
}

// LookPath finds file as a shell would, in the PATH of env (or this
// process's when env has none). Errors wrap exec.ErrNotFound or
// os.ErrPermission.
func LookPath(file string, env []string) (string, error) {
	if strings.Contains(file, "/") {
		if err := executable(file); err != nil {
			return "", &exec.Error{Name: file, Err: err}
		}
		return file, nil
	}
	path, found := "", false
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path, found = v, true
		}
	}
	if !found {
		path = os.Getenv("PATH")
	}
	var denied error
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, file)
		err := executable(p)
		if err == nil {
			if !filepath.IsAbs(p) {
				if abs, err := filepath.Abs(p); err == nil {
					p = abs
				}
			}
			return p, nil
		}
		if errors.Is(err, os.ErrPermission) && denied == nil {
			denied = err
		}
	}
	if denied != nil {
		return "", &exec.Error{Name: file, Err: denied}
	}
	return "", &exec.Error{Name: file, Err: exec.ErrNotFound}
}

func executable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("%s is a directory: %w", path, os.ErrPermission)
	}
	if err := unix.Access(path, unix.X_OK); err != nil {
		return fmt.Errorf("%s: %w", path, os.ErrPermission)
	}
	return nil
}
