package sandbox

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// controlFD is the init's end of the control socket (ExtraFiles[0]).
const controlFD = 3

// RunInit is the sandbox's init, PID 1 of the new namespaces: it builds
// them as the caller asks, starts the command, reaps, passes signals on, and
// returns the init's own exit code when the command has ended (the kernel
// then ends the rest of the PID namespace). main calls it when IsInit(os.Args)
// and exits with its result. It writes nothing to stdout or stderr, which are
// the command's: errors go to the caller.
func RunInit() int {
	// The init shares the caller's process group, so a terminal's ^C or
	// window change reaches it as well as the command. Notify, rather than
	// ignore, so that the signals do not end or stop the init and the
	// command still starts with their default dispositions (ignored ones
	// would be inherited across execve).
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM, syscall.SIGHUP,
		syscall.SIGTSTP, syscall.SIGTTIN, syscall.SIGTTOU, syscall.SIGWINCH,
		syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGPIPE)
	go func() {
		for range sigs {
		}
	}()
	ch, err := newChannel(os.NewFile(controlFD, "sandbox-control"))
	if err != nil {
		return 111
	}
	in := &initProc{ch: ch, reap: newReaper(), joined: map[int]bool{}}
	return in.run()
}

type initProc struct {
	ch       *channel
	reap     *reaper
	rootless bool

	mu     sync.Mutex
	cmd    int          // the command's pid; 0 before Run
	joined map[int]bool // pids of joined commands still running
}

func (in *initProc) run() int {
	m, fds, err := in.ch.recv()
	closeFDs(fds)
	if err != nil || m.Op != opSetup || m.Setup == nil {
		return 111
	}
	in.rootless = m.Setup.Rootless
	tunFD, diagFD, name, notes, err := setup(*m.Setup)
	if err != nil {
		in.ch.send(errorMsg(err))
		return 111
	}
	err = in.ch.send(message{Op: opReady, Tun: name, Notes: notes}, tunFD, diagFD)
	// Our copies go at once: the caller's must be the only TUN descriptor,
	// so the device disappears with the caller.
	unix.Close(tunFD)
	unix.Close(diagFD)
	if err != nil {
		return 111
	}

	m, fds, err = in.ch.recv()
	closeFDs(fds)
	if err != nil || m.Op != opRun || m.Spawn == nil {
		return 111 // the caller gave up before Run
	}
	sp := *m.Spawn
	if in.rootless {
		sp.Cred = nil
	}
	pid, exited, err := in.spawn(sp, []*os.File{os.Stdin, os.Stdout, os.Stderr}, false)
	if err != nil {
		in.ch.send(errorMsg(err))
		return 111
	}
	in.mu.Lock()
	in.cmd = pid
	in.mu.Unlock()
	// From here on only the command's tree holds the caller's terminal
	// and pipes: a reader sees their end when the command's tree is done.
	releaseStdio()
	if err := in.ch.send(message{Op: opStarted, Pid: pid}); err != nil {
		in.hangup()
	} else {
		go in.control()
	}
	ws := <-exited
	in.ch.send(message{Op: opExit, Exit: exitOf(ws)})
	return 0
}

// control serves the caller's messages while the command runs.
func (in *initProc) control() {
	for {
		m, fds, err := in.ch.recv()
		if err != nil {
			// The caller is gone, and with it the TUN: nothing in here
			// can reach anything any more. Hang the commands up, as a
			// terminal does when its line drops.
			in.hangup()
			return
		}
		switch m.Op {
		case opSignal:
			closeFDs(fds)
			in.mu.Lock()
			pid := in.cmd
			in.mu.Unlock()
			if sig := syscall.Signal(m.Signal); pid > 0 && sig > 0 {
				unix.Kill(pid, sig)
			}
		case opJoin:
			if len(fds) != 1 {
				closeFDs(fds)
				continue
			}
			go in.serveJoin(fds[0], m.Cred)
		default:
			closeFDs(fds)
		}
	}
}

// hangup sends SIGHUP and SIGCONT to every command, as a terminal's hangup.
func (in *initProc) hangup() {
	in.mu.Lock()
	pids := []int{in.cmd}
	for p := range in.joined {
		pids = append(pids, p)
	}
	in.mu.Unlock()
	for _, p := range pids {
		if p > 0 {
			unix.Kill(p, unix.SIGHUP)
			unix.Kill(p, unix.SIGCONT)
		}
	}
}

// serveJoin runs one joined command: the joiner's request and stdio come
// over the connection fd, which the caller accepted and checked. cred, when
// set, is who the command runs as; nil lets a root joiner choose (the
// caller sends nil only for a joiner that is root).
func (in *initProc) serveJoin(fd int, cred *Cred) {
	jc, err := newChannel(os.NewFile(uintptr(fd), "sandbox-join"))
	if err != nil {
		return
	}
	defer jc.close()
	jc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	m, fds, err := jc.recv()
	if err != nil {
		return
	}
	jc.c.SetReadDeadline(time.Time{})
	if m.Op != opRun || m.Spawn == nil || len(fds) != 3 {
		closeFDs(fds)
		jc.send(errorMsg(errors.New("sandbox: a join request carries a command and its stdin, stdout and stderr")))
		return
	}
	files := make([]*os.File, 3)
	for i, f := range fds {
		files[i] = os.NewFile(uintptr(f), "joined-stdio")
	}
	sp := *m.Spawn
	switch {
	case in.rootless:
		sp.Cred = nil
	case cred != nil:
		sp.Cred = cred
	}
	// Its own session: it is not in the caller's process group, so the
	// caller's terminal does not signal it; the joiner forwards signals.
	pid, exited, err := in.spawn(sp, files, true)
	for _, f := range files {
		f.Close()
	}
	if err != nil {
		jc.send(errorMsg(err))
		return
	}
	in.mu.Lock()
	in.joined[pid] = true
	in.mu.Unlock()
	defer func() {
		in.mu.Lock()
		delete(in.joined, pid)
		in.mu.Unlock()
	}()
	jc.send(message{Op: opStarted, Pid: pid})
	go func() {
		for {
			m, fds, err := jc.recv()
			closeFDs(fds)
			if err != nil {
				if errors.Is(err, io.EOF) {
					// The joiner is gone: hang its command up.
					unix.Kill(pid, unix.SIGHUP)
					unix.Kill(pid, unix.SIGCONT)
				}
				return
			}
			if m.Op == opSignal && m.Signal > 0 {
				unix.Kill(pid, syscall.Signal(m.Signal))
			}
		}
	}()
	ws := <-exited
	jc.send(message{Op: opExit, Exit: exitOf(ws)})
}

// spawn starts a command with no capabilities and no_new_privs, on a
// thread of its own whose credentials are reduced first (a child gets the
// credentials of the thread that forks it). The thread is never handed back
// to the scheduler: it ends with its goroutine.
func (in *initProc) spawn(sp spawnMsg, stdio []*os.File, setsid bool) (int, <-chan unix.WaitStatus, error) {
	type result struct {
		pid    int
		exited <-chan unix.WaitStatus
		err    error
	}
	rc := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked, see above
		if err := dropPrivileges(); err != nil {
			rc <- result{err: err}
			return
		}
		sys := &syscall.SysProcAttr{Setsid: setsid}
		if c := sp.Cred; c != nil {
			sys.Credential = &syscall.Credential{Uid: c.UID, Gid: c.GID, Groups: c.Groups}
		}
		attr := &os.ProcAttr{Dir: sp.Dir, Env: sp.Env, Files: stdio, Sys: sys}
		pid, exited, err := in.reap.start(func() (int, error) {
			p, err := os.StartProcess(sp.Path, sp.Args, attr)
			if err != nil {
				return 0, err
			}
			pid := p.Pid
			p.Release() // the reaper waits for it
			return pid, nil
		})
		rc <- result{pid, exited, err}
	}()
	r := <-rc
	return r.pid, r.exited, r.err
}

// dropPrivileges empties the calling thread's ambient, inheritable and
// bounding capability sets and sets no_new_privs, so that whatever it
// executes gains no capability, whatever the uid (root included) or the
// file's capabilities and set-id bits. The permitted set stays until exec
// (the child may need CAP_SETUID to take on Cred); a non-root execve then
// keeps nothing, and a root one nothing the bounding set does not allow.
func dropPrivileges() error {
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("sandbox: clearing ambient capabilities: %w", err)
	}
	for c := 0; c < 64; c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			if errors.Is(err, unix.EINVAL) {
				break // past the kernel's last capability
			}
			return fmt.Errorf("sandbox: dropping capability %d from the bounding set: %w", c, err)
		}
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("sandbox: reading capabilities: %w", err)
	}
	data[0].Inheritable, data[1].Inheritable = 0, 0
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("sandbox: clearing inheritable capabilities: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("sandbox: setting no_new_privs: %w", err)
	}
	return nil
}

// releaseStdio points the init's stdin, stdout and stderr at /dev/null.
func releaseStdio() {
	null, err := unix.Open("/dev/null", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	for fd := 0; fd <= 2; fd++ {
		unix.Dup3(null, fd, 0)
	}
	unix.Close(null)
}

func exitOf(ws unix.WaitStatus) *Exit {
	if ws.Signaled() {
		return &Exit{Signal: ws.Signal()}
	}
	return &Exit{Code: ws.ExitStatus()}
}

// reaper waits for every child of the init, PID 1, orphans included, and
// hands the statuses of the commands it started to whoever waits for them.
type reaper struct {
	mu      sync.Mutex
	waiters map[int]chan unix.WaitStatus
	once    sync.Once
}

func newReaper() *reaper { return &reaper{waiters: map[int]chan unix.WaitStatus{}} }

// start runs fork (which starts a process and returns its pid) and returns
// a channel that gets the process's status. A process that ends at once is
// not missed: its status waits for the registration.
func (r *reaper) start(fork func() (int, error)) (int, <-chan unix.WaitStatus, error) {
	r.mu.Lock()
	pid, err := fork()
	if err != nil {
		r.mu.Unlock()
		return 0, nil, err
	}
	c := make(chan unix.WaitStatus, 1)
	r.waiters[pid] = c
	r.mu.Unlock()
	r.once.Do(func() { go r.loop() })
	return pid, c, nil
}

func (r *reaper) loop() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			// ECHILD: nothing to wait for until the next start.
			time.Sleep(20 * time.Millisecond)
			continue
		}
		r.mu.Lock()
		if c, ok := r.waiters[pid]; ok {
			delete(r.waiters, pid)
			c <- ws
		}
		r.mu.Unlock()
	}
}
