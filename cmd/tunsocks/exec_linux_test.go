package main

import (
	"context"
	"os/user"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

func TestExecUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--proxy", "direct"}, exitUsage, "exec needs a command"},
		{[]string{"--proxy", "direct", "--tcp-stack", "system", "--", "true"}, exitUsage, "--tcp-stack system"},
		{[]string{"--proxy", "direct", "--tun-fd", "3", "--", "true"}, exitUsage, "--tun-fd: exec creates its own TUN"},
		{[]string{"--join", "work", "--proxy", "direct", "--", "true"}, exitUsage, `--join runs the command in exec "work", whose tunsocks carries the flows: --proxy does not apply`},
		{[]string{"--proxy", "direct", "--name", "a/b", "--", "true"}, exitUsage, `--name: name "a/b"`},
		{[]string{"--", "true"}, exitUsage, "nothing says where flows go"},
		{[]string{"--proxy", "direct", "--", "no-such-command-tunsocks"}, 127, "exec: no-such-command-tunsocks: command not found"},
		{[]string{"--join", "no-such-exec", "--", "true"}, exitFailure, `no exec named "no-such-exec" is running`},
		// exec routes its sandbox only: run's host routing flags are not its.
		{[]string{"--proxy", "direct", "--auto-route", "--", "true"}, exitUsage, "flag provided but not defined: -auto-route"},
		{[]string{"--proxy", "direct", "--include-cgroup", "/a.scope", "--", "true"}, exitUsage, "flag provided but not defined: -include-cgroup"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
			var stdout, stderr testenv.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
			defer cancel()
			code := run(ctx, append([]string{"tunsocks", "exec"}, tc.args...), &stdout, &stderr)
			if code != tc.code || !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("exit %d, stderr:\n%s\nwant exit %d and %q", code, stderr.String(), tc.code, tc.want)
			}
		})
	}
}

// TestExecIdentity: as root, the command runs as the user sudo was invoked
// by, or --user; with that user's HOME, USER and LOGNAME.
func TestExecIdentity(t *testing.T) {
	testenv.NeedRoot(t, "exec picks another user's identity only as root")
	nobody, err := user.LookupId("65534")
	if err != nil {
		testenv.Unavailable(t, "no user 65534 in the user database")
	}
	env := []string{"PATH=/bin", "HOME=/root", "USER=root", "SUDO_UID=65534", "SUDO_GID=65534"}
	rootless, cred, out, err := execIdentity("", env)
	if err != nil || rootless || cred == nil || cred.UID != 65534 || cred.GID != 65534 || !slices.Contains(cred.Groups, 65534) {
		t.Fatalf("under sudo: rootless=%v cred=%+v err=%v", rootless, cred, err)
	}
	for _, want := range []string{"HOME=" + nobody.HomeDir, "USER=" + nobody.Username, "LOGNAME=" + nobody.Username, "PATH=/bin"} {
		if !slices.Contains(out, want) {
			t.Errorf("environment %q lacks %q", out, want)
		}
	}
	if slices.Contains(out, "HOME=/root") {
		t.Errorf("root's HOME kept: %q", out)
	}
	_, cred, _, err = execIdentity(nobody.Username, []string{"SUDO_UID=0", "SUDO_GID=0"})
	if err != nil || cred == nil || cred.UID != 65534 {
		t.Errorf("--user %s: cred=%+v err=%v", nobody.Username, cred, err)
	}
	_, cred, _, err = execIdentity("", []string{"PATH=/bin"})
	if err != nil || cred != nil {
		t.Errorf("root without sudo: cred=%+v err=%v, want none (root, no capabilities)", cred, err)
	}
	if _, _, _, err := execIdentity("no-such-user-tunsocks", nil); err == nil {
		t.Error("--user of an unknown user accepted")
	}
}

type signalRecorder struct{ got []syscall.Signal }

func (r *signalRecorder) Forward(s syscall.Signal) error {
	r.got = append(r.got, s)
	return nil
}

// TestSignalGate: before the start, a signal is not the command's (exec
// gives up starting on INT and TERM); during it, it is held and passed on
// once the command runs (it may have started, and said so, before Run
// returned: exec used to give up then and kill it); after it, it is passed
// on at once. A failed start drops what was held.
func TestSignalGate(t *testing.T) {
	g := &signalGate{log: discardLogger()}
	if g.pass(syscall.SIGTERM) {
		t.Error("a signal before the start was taken")
	}
	g.starting()
	if !g.pass(syscall.SIGTERM) || !g.pass(syscall.SIGHUP) {
		t.Error("a signal during the start was not held")
	}
	r := &signalRecorder{}
	g.ran(r)
	if !slices.Equal(r.got, []syscall.Signal{syscall.SIGTERM, syscall.SIGHUP}) {
		t.Errorf("held signals passed on: %v, want TERM then HUP", r.got)
	}
	if !g.pass(syscall.SIGINT) || !slices.Equal(r.got, []syscall.Signal{syscall.SIGTERM, syscall.SIGHUP, syscall.SIGINT}) {
		t.Errorf("a signal once the command runs: %v", r.got)
	}

	g = &signalGate{log: discardLogger()}
	g.starting()
	for range 2 * maxHeldSignals {
		g.pass(syscall.SIGWINCH)
	}
	if len(g.pending) != maxHeldSignals {
		t.Errorf("%d signals held, want at most %d", len(g.pending), maxHeldSignals)
	}
	g.ran(nil)
	if g.pass(syscall.SIGINT) || len(g.pending) != 0 {
		t.Error("after a failed start, a signal was taken or signals are still held")
	}
}
