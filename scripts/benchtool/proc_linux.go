package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a long-running process started inside a lab namespace with
// `ip netns exec`, its output kept (the last 64 KiB) for diagnosis.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *tail
	done chan struct{}
}

// startInEnv starts name with args inside namespace ns, with extra
// environment variables ("K=V") when env is not empty. The process gets
// SIGKILL if benchtool dies, so nothing outlives a crashed run.
func startInEnv(ns string, env []string, name string, args ...string) (*proc, error) {
	p := &proc{name: name, out: &tail{max: 64 << 10}, done: make(chan struct{})}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
	if len(env) > 0 {
		p.cmd.Env = append(os.Environ(), env...)
	}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", name, ns, err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits up to 5 s, then kills.
func (p *proc) stop() {
	if p.exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// pid is the process' own pid. `ip netns exec` execs the command in place,
// so it is the pid started; should an iproute2 fork instead, its only child
// is taken.
func (p *proc) pid() (int, error) {
	pid := p.cmd.Process.Pid
	for range 50 {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil {
			return 0, fmt.Errorf("%s: %w", p.name, err)
		}
		if strings.TrimSpace(string(comm)) != "ip" {
			return pid, nil
		}
		children, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		if f := strings.Fields(string(children)); len(f) == 1 {
			if c, err := strconv.Atoi(f[0]); err == nil {
				return c, nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return 0, fmt.Errorf("%s: could not find the process behind 'ip netns exec' (pid %d)", p.name, pid)
}

// rss reads VmRSS of a process, in bytes.
func rss(pid int) (float64, error) {
	v, err := statusBytes(pid, "VmRSS")
	if err != nil {
		return 0, err
	}
	return v[0], nil
}

// rssSplit reads, from one look at /proc/PID/status, a process's RSS
// and its two parts that matter, in bytes: RssAnon (heap, stacks,
// written data: memory only this process holds) and RssFile (mapped
// pages of its executable and libraries, which stay in the page cache,
// shared, when unmapped). VmRSS is their sum plus RssShmem.
func rssSplit(pid int) (total, anon, file float64, err error) {
	v, err := statusBytes(pid, "VmRSS", "RssAnon", "RssFile")
	if err != nil {
		return 0, 0, 0, err
	}
	return v[0], v[1], v[2], nil
}

// statusBytes reads the "key:  N kB" lines of /proc/PID/status for keys,
// in bytes.
func statusBytes(pid int, keys ...string) ([]float64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	vals := make([]float64, len(keys))
	found := 0
	s := bufio.NewScanner(f)
	for s.Scan() {
		for i, key := range keys {
			v, ok := strings.CutPrefix(s.Text(), key+":")
			if !ok {
				continue
			}
			fields := strings.Fields(v)
			if len(fields) != 2 || fields[1] != "kB" {
				return nil, fmt.Errorf("pid %d: unexpected %s line %q", pid, key, s.Text())
			}
			kb, err := strconv.ParseFloat(fields[0], 64)
			if err != nil {
				return nil, fmt.Errorf("pid %d: %s: %w", pid, key, err)
			}
			vals[i] = kb * 1024
			found++
		}
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	if found != len(keys) {
		return nil, fmt.Errorf("pid %d: want %s in /proc status, found %d of them", pid, strings.Join(keys, ", "), found)
	}
	return vals, nil
}

// runIn runs a command to completion inside namespace ns, bounded by
// timeout, and returns its standard output (stderr is appended to errors).
func runIn(ctx context.Context, timeout time.Duration, ns, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 2 * time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		err = errors.Join(fmt.Errorf("%s did not finish within %v", name, timeout), ctx.Err())
	}
	if err != nil {
		return stdout.Bytes(), fmt.Errorf("%s: %w: %s", name, err, truncate(strings.TrimSpace(stderr.String()+" "+stdout.String()), 400))
	}
	return stdout.Bytes(), nil
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

// machineBusy is the CPU time all CPUs have spent not idle so far (user,
// system, interrupts and softirq; idle and iowait excluded), from /proc/stat.
func machineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0, fmt.Errorf("unexpected /proc/stat first line %q", line)
	}
	var busy int64
	for i, s := range f[1:] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %q: %w", s, err)
		}
		// user nice system idle iowait irq softirq steal guest guest_nice;
		// guest time is already counted in user.
		if i != 3 && i != 4 && i < 8 {
			busy += v
		}
	}
	return time.Duration(busy) * (time.Second / 100), nil
}

// cpuTime is the user plus system CPU time pid has used so far.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields after its ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("pid %d: unexpected /proc stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("pid %d: short /proc stat", pid)
	}
	// utime and stime are fields 14 and 15 of stat, in clock ticks
	// (USER_HZ, 100 on Linux).
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("pid %d: bad utime/stime in /proc stat", pid)
	}
	return time.Duration(ut+st) * (time.Second / 100), nil
}

// ctxSwitches is the number of times pid's threads have been switched out
// so far, voluntarily (a wait: what a wakeup costs) and not, summed over
// /proc/PID/task.
func ctxSwitches(pid int) (float64, error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, err
	}
	var total float64
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()))
		if err != nil {
			continue // the thread exited
		}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok || (k != "voluntary_ctxt_switches" && k != "nonvoluntary_ctxt_switches") {
				continue
			}
			n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return 0, fmt.Errorf("pid %d: %s: %w", pid, k, err)
			}
			total += n
		}
	}
	return total, nil
}

// threadCounters is what the round-trip rows read of a TUN program
// around each of its turns: the context switches of its threads (as
// ctxSwitches) and the CPU time they have run, from the scheduler's
// nanosecond sum_exec_runtime (/proc/PID/task/TID/schedstat) rather than
// /proc/PID/stat's 10 ms ticks, which a turn of a few hundred round trips
// (~50 ms of CPU) would round away.
func threadCounters(pid int) (switches float64, cpu time.Duration, err error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if err != nil {
			continue // the thread exited
		}
		f := strings.Fields(string(b))
		if len(f) < 1 {
			return 0, 0, fmt.Errorf("pid %d task %s: unexpected schedstat %q", pid, t.Name(), b)
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("pid %d task %s: schedstat: %w", pid, t.Name(), err)
		}
		cpu += time.Duration(ns)
	}
	switches, err = ctxSwitches(pid)
	return switches, cpu, err
}
