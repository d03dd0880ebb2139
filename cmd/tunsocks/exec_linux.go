package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tunsocks/tunsocks/internal/direct"
	"github.com/tunsocks/tunsocks/outbound"
	"github.com/tunsocks/tunsocks/procinfo"
	"github.com/tunsocks/tunsocks/router"
	"github.com/tunsocks/tunsocks/rules"
	"github.com/tunsocks/tunsocks/sandbox"
	"github.com/tunsocks/tunsocks/tun"
)

// forwardedSignals are passed on to the command (a terminal's ^C, ^\ and
// window changes reach it directly; see sandbox.Forward).
var forwardedSignals = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT,
	syscall.SIGWINCH, syscall.SIGUSR1, syscall.SIGUSR2}

func execAction(c *cli.Context) error {
	args := c.Args().Slice()
	if len(args) == 0 {
		return usagef("exec needs a command: tunsocks exec [--proxy URL | --config FILE] -- CMD [ARGS...]")
	}
	// From the start: a signal must not end tunsocks before the command
	// can get it.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, forwardedSignals...)
	defer signal.Stop(sigs)
	if name := c.String("join"); name != "" {
		return execJoin(c, name, args, sigs)
	}
	if !c.IsSet("log-level") {
		// The terminal is the command's: tunsocks speaks up for trouble only.
		c.Set("log-level", "warn")
	}
	log, hub, level, err := newLiveLogger(c)
	if err != nil {
		return err
	}
	cfg, err := loadRunConfig(c)
	if err != nil {
		return err
	}
	if routing(cfg) {
		// A config shared with 'run': its host routing is not exec's.
		log.Info("exec routes its sandbox only: the config's auto-route and gateway are ignored")
		cfg.Route.AutoRoute, cfg.Route.Gateway = false, ""
	}
	if cfg.Tun.FD >= 0 {
		return usagef("--tun-fd: exec creates its own TUN inside its sandbox")
	}
	if cfg.TCP.Stack == "system" {
		return usagef("--tcp-stack system: the host kernel cannot terminate TCP for exec, whose TUN lives in the sandbox's namespace; use gvisor")
	}
	if cfg.DNS.Enable == nil {
		// Lookups inside go to us: resolv.conf points here.
		on := true
		cfg.DNS.Enable = &on
	}
	rootless, cred, env, err := execIdentity(c.String("user"), os.Environ())
	if err != nil {
		return err
	}
	userName := userNameOf(cred)
	path, err := sandbox.LookPath(args[0], env)
	if err != nil {
		return commandError(args[0], err)
	}
	name := c.String("name")
	var pubDir string
	if name != "" {
		if err := sandbox.CheckName(name); err != nil {
			return usagef("--name: %v", err)
		}
		if pubDir, err = sandbox.SocketDir(os.Getuid(), os.Getenv); err != nil {
			return usagef("--name: %v", err)
		}
		if err := sandbox.CheckFree(pubDir, name); err != nil {
			return usagef("--name: %v", err)
		}
	}
	if rootless {
		exe, _ := os.Executable()
		groups, _ := os.Getgroups()
		if err := sandbox.Probe(sandbox.ProbeEnv{Root: "/", UID: os.Getuid(), GID: os.Getgid(), Groups: groups, Exe: exe}); err != nil {
			return err
		}
	}
	cwd, err := os.Getwd()
	if err != nil {
		cwd = "/"
	}
	spec := sandbox.Spec{
		Path: path, Args: args, Env: env, Dir: cwd,
		Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr,
		Rootless: rootless, Cred: cred,
		Tun:    sandbox.TunSpec{Name: cfg.Tun.Name, Addrs: cfg.Tun.Addrs, MTU: cfg.Tun.MTU, Offload: cfg.Tun.Offload},
		Mask:   sandbox.DefaultMask,
		Logger: log,
	}

	// The pipeline lives as long as the command, not as long as the
	// signal context: signals go to the command, and its end ends us.
	ctx, cancel := context.WithCancel(context.WithoutCancel(c.Context))
	defer cancel()
	type ended struct {
		exit sandbox.Exit
		err  error
	}
	done := make(chan ended, 1)
	var (
		sb     *sandbox.Sandbox
		gate   signalGate                      // where signals go: the command once it runs
		finder atomic.Pointer[procinfo.Finder] // the sandbox's sockets, once it exists
		runErr error
	)
	// The command's sockets live in the sandbox's network namespace: the
	// process lookup (PROCESS-NAME rules, the logs) asks there, through a
	// sock_diag socket the sandbox opens inside.
	lookup := func(network string, src, dst netip.AddrPort) (procinfo.Owner, error) {
		f := finder.Load()
		if f == nil {
			return procinfo.Owner{PID: -1, UID: -1}, errors.New("exec: no sandbox yet")
		}
		return f.LookupOwner(network, src, dst)
	}
	inName := "exec:" + filepath.Base(args[0])
	hooks := pipelineHooks{
		logs: hub, level: level,
		device: func(ctx context.Context, w *wiring) (*tun.Device, error) {
			if w.pool != nil {
				spec.ResolvConf = sandbox.ResolvConf(w.pool.DNSAddr(), w.pool.DNSAddr6())
			} else {
				log.Warn("DNS is off (--dns=false): the command resolves through the host's resolv.conf servers, via the rules")
			}
			s, err := sandbox.Start(ctx, spec)
			if err != nil {
				return nil, startError(err, rootless)
			}
			sb = s
			for _, n := range s.Notes() {
				log.Info("sandbox", "note", n)
			}
			finder.Store(procinfo.NewFinderIn(2*time.Second, s.TakeSockDiag()))
			return tun.Open(ctx, tun.Config{FD: s.TakeTUN(), Logger: log})
		},
		started: func(string) {
			gate.starting()
			if err := sb.Run(); err != nil {
				gate.ran(nil)
				runErr = err
				cancel()
				return
			}
			gate.ran(sb)
			go func() {
				exit, err := sb.Wait()
				done <- ended{exit, err}
				cancel()
			}()
			if name != "" {
				if sock, err := sb.Publish(pubDir, name); err != nil {
					log.Warn("cannot publish the exec for --join", "name", name, "err", err)
				} else {
					log.Info("joinable", "name", name, "socket", sock)
				}
			}
		},
	}
	hooks.lookup = lookup
	hooks.inbound = &router.Inbound{Type: rules.InExec, Name: inName, User: func(netip.Addr) string { return userName }}
	var loopback router.Outbound
	if c.Bool("allow-host-loopback") {
		loopback = &outbound.Redirect{Label: "HOST-LOOPBACK", From: hostLoopback, To: netip.AddrFrom4([4]byte{127, 0, 0, 1}),
			Dialer: &direct.Dialer{Timeout: cfg.DialTimeout}}
	}
	debug := log.Enabled(ctx, slog.LevelDebug)
	hooks.decide = func(next router.Decider) router.Decider {
		return func(m *rules.Metadata) router.Decision {
			if loopback != nil && m.Dst.Addr().Unmap() == hostLoopback {
				return router.Decision{Action: router.Proxy, Outbound: loopback, Rule: "--allow-host-loopback"}
			}
			if debug && m.Process == "" && m.Src.IsValid() {
				// The logs say which program of the command's tree
				// made each flow (rules that need it look it up anyway).
				if o, err := lookup(m.Network, m.Src, m.Dst); err == nil {
					m.Process, m.UID, m.PID = o.Path, o.UID, o.PID
				}
			}
			return next(m)
		}
	}
	gate.log = log
	go func() {
		for s := range sigs {
			if !gate.pass(s.(syscall.Signal)) && (s == syscall.SIGINT || s == syscall.SIGTERM) {
				cancel() // the command does not run yet: give up starting
			}
		}
	}()

	perr := runPipeline(ctx, cfg, log, hooks)
	if f := finder.Load(); f != nil {
		f.Close()
	}
	if sb == nil {
		return perr // failed before the sandbox existed
	}
	defer sb.Close()
	if runErr != nil {
		return commandError(args[0], runErr)
	}
	select {
	case e := <-done:
		if perr != nil {
			log.Warn("after the command ended", "err", perr)
		}
		if e.err != nil {
			return e.err
		}
		return cli.Exit("", e.exit.ExitCode())
	default:
	}
	// The pipeline stopped while the command ran (or before it did): the
	// command has no network any more; end it.
	sb.Kill()
	sb.Wait()
	if perr == nil {
		perr = errors.New("exec: stopped before the command ended")
	}
	return perr
}

// signalGate passes signals on to the command once it runs. While it is
// being started (it may already run, and have told the terminal it is
// ready, before Run returns) they are held, and passed on if it started.
type signalGate struct {
	log     *slog.Logger
	mu      sync.Mutex
	sb      signalTarget // the command runs
	start   bool         // Run is under way
	pending []syscall.Signal
}

// signalTarget is a running command (*sandbox.Sandbox).
type signalTarget interface{ Forward(syscall.Signal) error }

// maxHeldSignals bounds what a start holds: a few keys pressed meanwhile.
const maxHeldSignals = 16

func (g *signalGate) starting() {
	g.mu.Lock()
	g.start = true
	g.mu.Unlock()
}

// ran ends the start: sb is the sandbox whose command runs, nil if it
// could not start (held signals are then dropped).
func (g *signalGate) ran(sb signalTarget) {
	g.mu.Lock()
	held := g.pending
	g.sb, g.start, g.pending = sb, false, nil
	g.mu.Unlock()
	if sb != nil {
		for _, s := range held {
			g.forward(sb, s)
		}
	}
}

// pass passes s on, or holds it while the command is being started;
// false when there is no command to give it to.
func (g *signalGate) pass(s syscall.Signal) bool {
	g.mu.Lock()
	sb := g.sb
	if sb == nil && g.start && len(g.pending) < maxHeldSignals {
		g.pending = append(g.pending, s)
	}
	start := g.start
	g.mu.Unlock()
	if sb != nil {
		g.forward(sb, s)
		return true
	}
	return start
}

func (g *signalGate) forward(sb signalTarget, s syscall.Signal) {
	if err := sb.Forward(s); err != nil {
		g.log.Debug("passing a signal on", "signal", s, "err", err)
	}
}

// startError explains a sandbox that could not be built.
func startError(err error, rootless bool) error {
	var be *sandbox.BlockedError
	if errors.As(err, &be) || !rootless || !errors.Is(err, os.ErrPermission) {
		return err
	}
	return fmt.Errorf("%w\n(an unprivileged user namespace was refused: a security module, e.g. an AppArmor profile confining tunsocks, or a seccomp filter may forbid it; or run with sudo: the command still runs as you)", err)
}

// commandError is the error of a command that cannot be run, with the
// shell's exit codes: 127 not found, 126 not executable.
func commandError(cmd string, err error) error {
	switch {
	case errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist):
		return cli.Exit(fmt.Sprintf("exec: %s: command not found", cmd), 127)
	case errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.ENOEXEC):
		return cli.Exit(fmt.Sprintf("exec: %s: %v", cmd, err), 126)
	}
	return err
}

// execIdentity is who the command runs as, and its environment: the caller
// without root (in a user namespace: rootless); as root, --user, else the
// user sudo was invoked by (SUDO_UID, SUDO_GID), else root itself (nil Cred;
// without capabilities all the same). A command run as another user gets
// that user's HOME, USER and LOGNAME.
func execIdentity(name string, env []string) (rootless bool, cred *sandbox.Cred, _ []string, err error) {
	if os.Geteuid() != 0 {
		if name != "" {
			return false, nil, nil, usagef("--user %s needs root; without root the command runs as you", name)
		}
		return true, nil, env, nil
	}
	getenv := func(k string) string {
		for i := len(env) - 1; i >= 0; i-- {
			if v, ok := strings.CutPrefix(env[i], k+"="); ok {
				return v
			}
		}
		return ""
	}
	db := newUserDB()
	var u *user.User
	var uid, gid uint64
	switch {
	case name != "":
		if u, err = db.lookup(name); err != nil {
			if _, nerr := strconv.ParseUint(name, 10, 32); nerr == nil {
				u, err = db.lookupID(name)
			}
		}
		if err != nil {
			return false, nil, nil, usagef("--user %q: %v", name, err)
		}
		if uid, err = strconv.ParseUint(u.Uid, 10, 32); err == nil {
			gid, err = strconv.ParseUint(u.Gid, 10, 32)
		}
		if err != nil {
			return false, nil, nil, usagef("--user %q: not a numeric uid/gid (%s:%s)", name, u.Uid, u.Gid)
		}
	case getenv("SUDO_UID") != "":
		if uid, err = strconv.ParseUint(getenv("SUDO_UID"), 10, 32); err == nil {
			gid, err = strconv.ParseUint(getenv("SUDO_GID"), 10, 32)
		}
		if err != nil {
			return false, nil, nil, usagef("SUDO_UID %q / SUDO_GID %q: want numbers", getenv("SUDO_UID"), getenv("SUDO_GID"))
		}
		u, _ = db.lookupID(getenv("SUDO_UID")) // may be unknown to the user database
	default:
		return false, nil, env, nil
	}
	cred = &sandbox.Cred{UID: uint32(uid), GID: uint32(gid), Groups: []uint32{uint32(gid)}}
	if u != nil {
		if ids := db.groupIDs(u); len(ids) > 0 {
			cred.Groups = cred.Groups[:0]
			for _, id := range ids {
				if g, err := strconv.ParseUint(id, 10, 32); err == nil && !slices.Contains(cred.Groups, uint32(g)) {
					cred.Groups = append(cred.Groups, uint32(g))
				}
			}
		}
		env = setEnv(env, "HOME", u.HomeDir)
		env = setEnv(env, "USER", u.Username)
		env = setEnv(env, "LOGNAME", u.Username)
	}
	return false, cred, env, nil
}

// userNameOf names who the command runs as, for IN-USER rules and logs:
// cred's user, or this process's.
func userNameOf(cred *sandbox.Cred) string {
	uid := os.Getuid()
	if cred != nil {
		uid = int(cred.UID)
	}
	if u, err := newUserDB().lookupID(strconv.Itoa(uid)); err == nil {
		return u.Username
	}
	return strconv.Itoa(uid)
}

func setEnv(env []string, k, v string) []string {
	out := slices.DeleteFunc(slices.Clone(env), func(kv string) bool { return strings.HasPrefix(kv, k+"=") })
	return append(out, k+"="+v)
}

// execJoin runs the command in the running exec published as name.
func execJoin(c *cli.Context, name string, args []string, sigs <-chan os.Signal) error {
	for _, f := range c.LocalFlagNames() {
		switch f {
		case "join", "user":
		default:
			return usagef("--join runs the command in exec %q, whose tunsocks carries the flows: --%s does not apply", name, f)
		}
	}
	log, err := newLogger(c)
	if err != nil {
		return err
	}
	_, cred, env, err := execIdentity(c.String("user"), os.Environ())
	if err != nil {
		return err
	}
	sock, err := sandbox.FindJoin(name, os.Getuid(), os.Getenv)
	if err != nil {
		return err
	}
	path, err := sandbox.LookPath(args[0], env)
	if err != nil {
		return commandError(args[0], err)
	}
	cwd, err := os.Getwd()
	if err != nil {
		cwd = "/"
	}
	j, err := sandbox.Join(c.Context, sock, sandbox.JoinSpec{
		Path: path, Args: args, Env: env, Dir: cwd, Cred: cred,
		Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr,
	})
	if err != nil {
		return commandError(args[0], err)
	}
	defer j.Close()
	go func() {
		// The joined command has a session of its own: the terminal does
		// not signal it, so every signal is passed on.
		for s := range sigs {
			if err := j.Signal(s.(syscall.Signal)); err != nil {
				log.Debug("passing a signal on", "signal", s, "err", err)
			}
		}
	}()
	exit, err := j.Wait()
	if errors.Is(err, sandbox.ErrEnded) {
		return cli.Exit(fmt.Sprintf("exec %q ended, and %s with it", name, filepath.Base(args[0])), exit.ExitCode())
	}
	if err != nil {
		return err
	}
	return cli.Exit("", exit.ExitCode())
}
