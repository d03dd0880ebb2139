package hostnet

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// cgroup2Mount finds where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup
// on a unified host, /sys/fs/cgroup/unified on a hybrid one).
func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("cgroup2: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return fields[4], nil
			}
		}
	}
	return "", errors.New("cgroup2: no cgroup v2 hierarchy is mounted (--include-cgroup needs one)")
}

// resolveCgroup turns an --include-cgroup value into the cgroup's id and
// level: a path as /proc/PID/cgroup shows it ("/user.slice/app.scope") or
// an absolute path under the cgroup2 mount.
func resolveCgroup(p string) (Cgroup, error) {
	mnt, mntErr := cgroup2Mount()
	rel := p
	if mntErr == nil {
		if r, err := filepath.Rel(mnt, p); err == nil && filepath.IsAbs(p) && !strings.HasPrefix(r, "..") {
			rel = r
		}
	}
	rel = strings.Trim(path.Clean("/"+rel), "/")
	if rel == "" {
		return Cgroup{}, fmt.Errorf("--include-cgroup %q: that is the root cgroup, which holds every process: use --auto-route without --include-cgroup", p)
	}
	var st *syscall.Stat_t
	var err error
	if mntErr == nil {
		st, err = statDir(filepath.Join(mnt, rel))
	} else {
		// Under `ip netns exec` /sys is another sysfs, without the cgroup
		// mounts: look in a mount of cgroup2 that only one thread sees.
		st, err = statInPrivateCgroup2(rel, mntErr)
		mnt = "the cgroup2 hierarchy"
	}
	if err != nil {
		return Cgroup{}, fmt.Errorf("--include-cgroup %q: %w (want a cgroup path like /user.slice/user-1000.slice/app.scope, as /proc/PID/cgroup shows it, or a directory under %s)", p, err, mnt)
	}
	return Cgroup{Path: rel, ID: st.Ino, Level: strings.Count(rel, "/") + 1}, nil
}

func statDir(p string) (*syscall.Stat_t, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a cgroup directory", p)
	}
	return st, nil
}

// statInPrivateCgroup2 stats rel in the cgroup2 hierarchy mounted in a
// mount namespace of one OS thread, which exits afterwards and takes the
// namespace and its mount with it: nothing of the host's mounts changes.
func statInPrivateCgroup2(rel string, notFound error) (*syscall.Stat_t, error) {
	type result struct {
		st  *syscall.Stat_t
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// Never unlocked: the thread, and its mount namespace, end with
		// this goroutine.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_FS | unix.CLONE_NEWNS); err != nil {
			ch <- result{err: errors.Join(notFound, fmt.Errorf("a private mount namespace: %w", err))}
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			ch <- result{err: errors.Join(notFound, err)}
			return
		}
		dir, err := os.MkdirTemp("", "tunsocks-cgroup2-")
		if err != nil {
			ch <- result{err: errors.Join(notFound, err)}
			return
		}
		defer os.Remove(dir)
		if err := unix.Mount("cgroup2", dir, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC|unix.MS_RDONLY, ""); err != nil {
			ch <- result{err: errors.Join(notFound, fmt.Errorf("mounting cgroup2: %w", err))}
			return
		}
		st, err := statDir(filepath.Join(dir, rel))
		unix.Unmount(dir, unix.MNT_DETACH)
		ch <- result{st, err}
	}()
	r := <-ch
	return r.st, r.err
}

// procCgroup is the cgroup v2 path of a process, "" for the root.
func procCgroup(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			return strings.Trim(rest, "/"), nil
		}
	}
	return "", fmt.Errorf("/proc/%d/cgroup: no cgroup v2 entry", pid)
}
