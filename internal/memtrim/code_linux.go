package memtrim

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// DropCode unmaps the pages of the executable's code and read-only data
// that this process has resident, and returns how many bytes that was.
// Start-up runs a little of nearly every package linked in (each one's
// init, the command line, the config), and the kernel maps 64 KiB around
// every page it touches, so a Go program sits on most of its binary in
// its resident set afterwards. The pages stay in the page cache: what is
// used again comes back with a minor fault. Writable mappings, and
// read-only ones holding private copies of pages, are left alone (their
// contents would be lost).
func DropCode() (uint64, error) {
	ms, err := exeMappings()
	if err != nil {
		return 0, err
	}
	return dropClean(ms, func(mapping) bool { return true })
}

// exeMappings returns the mappings of /proc/self/smaps that map the
// executable's file.
func exeMappings() ([]mapping, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/exe", &st); err != nil {
		return nil, fmt.Errorf("memtrim: %w", err)
	}
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return nil, fmt.Errorf("memtrim: %w", err)
	}
	ms, err := parseSmaps(b)
	if err != nil {
		return nil, err
	}
	exe := ms[:0]
	for _, m := range ms {
		if m.inode == st.Ino && m.devMajor == unix.Major(st.Dev) && m.devMinor == unix.Minor(st.Dev) {
			exe = append(exe, m)
		}
	}
	return exe, nil
}

// mapping is what dropClean needs of one mapping in /proc/PID/smaps.
type mapping struct {
	start, end         uint64
	perms              string
	devMajor, devMinor uint32
	inode              uint64
	rss, anon          uint64 // bytes
}

// parseSmaps reads the mappings of an smaps file.
func parseSmaps(b []byte) ([]mapping, error) {
	var ms []mapping
	s := bufio.NewScanner(bytes.NewReader(b))
	s.Buffer(make([]byte, 0, 4096), 1<<20)
	for s.Scan() {
		line := s.Text()
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if key, ok := strings.CutSuffix(f[0], ":"); ok {
			// A field of the mapping above: "Rss:  123 kB".
			if len(ms) == 0 || len(f) != 3 || f[2] != "kB" {
				continue
			}
			v, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("memtrim: smaps line %q: %w", line, err)
			}
			switch key {
			case "Rss":
				ms[len(ms)-1].rss = v << 10
			case "Anonymous":
				ms[len(ms)-1].anon = v << 10
			}
			continue
		}
		m, err := parseMapLine(f)
		if err != nil {
			return nil, fmt.Errorf("memtrim: smaps line %q: %w", line, err)
		}
		ms = append(ms, m)
	}
	return ms, s.Err()
}

// parseMapLine parses the fields of a mapping's first line:
// "start-end perms offset major:minor inode [path]".
func parseMapLine(f []string) (mapping, error) {
	var m mapping
	if len(f) < 5 {
		return m, fmt.Errorf("want at least 5 fields")
	}
	lo, hi, ok := strings.Cut(f[0], "-")
	maj, mnr, ok2 := strings.Cut(f[3], ":")
	if !ok || !ok2 || len(f[1]) != 4 {
		return m, fmt.Errorf("want start-end perms offset major:minor inode")
	}
	var err [5]error
	m.start, err[0] = strconv.ParseUint(lo, 16, 64)
	m.end, err[1] = strconv.ParseUint(hi, 16, 64)
	major, e2 := strconv.ParseUint(maj, 16, 32)
	minor, e3 := strconv.ParseUint(mnr, 16, 32)
	err[2], err[3] = e2, e3
	m.inode, err[4] = strconv.ParseUint(f[4], 10, 64)
	for _, e := range err {
		if e != nil {
			return m, e
		}
	}
	if m.end < m.start {
		return m, fmt.Errorf("end before start")
	}
	m.perms, m.devMajor, m.devMinor = f[1], uint32(major), uint32(minor)
	return m, nil
}

// dropClean unmaps the resident pages of the mappings that match and
// hold nothing but clean pages of their file: read-only, private, no
// anonymous (copied-on-write) pages. It returns the bytes they had
// resident.
func dropClean(ms []mapping, match func(mapping) bool) (uint64, error) {
	var dropped uint64
	for _, m := range ms {
		if m.inode == 0 || m.perms[1] == 'w' || m.perms[3] != 'p' || m.anon != 0 || m.rss == 0 || !match(m) {
			continue
		}
		// MADV_DONTNEED on a private file mapping without private pages
		// only removes the page table entries: the next access maps the
		// page cache's page again.
		if _, _, e := unix.Syscall(unix.SYS_MADVISE, uintptr(m.start), uintptr(m.end-m.start), unix.MADV_DONTNEED); e != 0 {
			return dropped, fmt.Errorf("memtrim: madvise %#x-%#x: %w", m.start, m.end, e)
		}
		dropped += m.rss
	}
	return dropped, nil
}
