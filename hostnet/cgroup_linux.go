package hostnet

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
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
	mnt, err := cgroup2Mount()
	if err != nil {
		return Cgroup{}, err
	}
	rel := p
	if r, err := filepath.Rel(mnt, p); err == nil && filepath.IsAbs(p) && !strings.HasPrefix(r, "..") {
		rel = r
	}
	rel = strings.Trim(path.Clean("/"+rel), "/")
	if rel == "" {
		return Cgroup{}, fmt.Errorf("--include-cgroup %q: that is the root cgroup, which holds every process: use --auto-route without --include-cgroup", p)
	}
	full := filepath.Join(mnt, rel)
	fi, err := os.Stat(full)
	if err != nil {
		return Cgroup{}, fmt.Errorf("--include-cgroup %q: %w (want a cgroup path like /user.slice/user-1000.slice/app.scope, as /proc/PID/cgroup shows it, or a directory under %s)", p, err, mnt)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || !fi.IsDir() {
		return Cgroup{}, fmt.Errorf("--include-cgroup %q: %s is not a cgroup directory", p, full)
	}
	return Cgroup{Path: rel, ID: st.Ino, Level: strings.Count(rel, "/") + 1}, nil
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
