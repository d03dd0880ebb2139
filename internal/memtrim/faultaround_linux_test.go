//go:build linux && !android && (amd64 || arm64 || 386 || arm || riscv64 || loong64 || s390x)

package memtrim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

// mappedPages counts the pages of b that are mapped in this process's
// page tables (/proc/self/pagemap's present bit), which mincore does not
// tell: it reports the page cache.
func mappedPages(t *testing.T, b []byte) int {
	t.Helper()
	f, err := os.Open("/proc/self/pagemap")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	page := uintptr(os.Getpagesize())
	n := uintptr(len(b)) / page
	buf := make([]byte, 8*n)
	if _, err := f.ReadAt(buf, int64(addrOf(b)/page*8)); err != nil {
		t.Fatal(err)
	}
	mapped := 0
	for i := range n {
		if binary.LittleEndian.Uint64(buf[8*i:])>>63 == 1 {
			mapped++
		}
	}
	return mapped
}

// readOnePage unmaps every page of b (a private read-only file mapping:
// its pages stay in the page cache), reads one byte in the middle, and
// returns how many pages that read mapped.
func readOnePage(t *testing.T, b []byte) int {
	t.Helper()
	if err := unix.Madvise(b, unix.MADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	if n := mappedPages(t, b); n != 0 {
		t.Fatalf("%d pages still mapped after MADV_DONTNEED", n)
	}
	if c := b[len(b)/2+100]; c != "tunsocks"[100%8] {
		t.Fatalf("read %q", c)
	}
	return mappedPages(t, b)
}

// noUffd skips (fails under CI) when this kernel has no asynchronous
// userfaultfd write protection (before 6.7) or forbids userfaultfd;
// NoFaultAround then changes nothing, which its callers accept.
func noUffd(t *testing.T, err error) {
	t.Helper()
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EPERM) {
		testenv.Unavailable(t, fmt.Sprintf("no asynchronous userfaultfd write protection here (Linux 6.7+): %v", err))
	}
	t.Fatal(err)
}

// TestNoFaultAroundMapsOnlyThePageRead: reading one page of a private
// file mapping whose pages are in the page cache maps its neighbours too
// (fault-around, the kernel's default); registered by noFaultAround it
// maps that page alone, and once the registration is closed the
// neighbours again.
func TestNoFaultAroundMapsOnlyThePageRead(t *testing.T) {
	b, _ := mapFile(t, unix.PROT_READ)
	for i := 0; i < len(b); i += 4096 {
		_ = b[i] // every page into the page cache
	}
	around := readOnePage(t, b)
	if around <= 1 {
		t.Logf("fault-around is off on this machine (%d page mapped by one read): the test cannot tell the difference", around)
	}
	m := mappingOf(t, addrOf(b))
	f, err := noFaultAround([]mapping{m})
	if err != nil {
		noUffd(t, err)
	}
	if n := readOnePage(t, b); n != 1 {
		t.Errorf("registered: one read mapped %d pages, want 1 (%d without the registration)", n, around)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if n := readOnePage(t, b); around > 1 && n <= 1 {
		t.Errorf("after Close: one read mapped %d page, want more as before the registration (%d)", n, around)
	}
}

// TestNoFaultAroundRegistersTheExecutable: NoFaultAround registers every
// read-only mapping of the executable (smaps' VmFlags "uw": userfaultfd
// write-protect tracking) and nothing else, the program runs on, and
// Close ends the registration.
func TestNoFaultAroundRegistersTheExecutable(t *testing.T) {
	c, err := NoFaultAround()
	if err != nil {
		noUffd(t, err)
	}
	exe, others := uffdMappings(t)
	if exe.registered == 0 || exe.registered != exe.readOnly {
		t.Errorf("%d of the executable's %d read-only mappings registered", exe.registered, exe.readOnly)
	}
	if others != 0 {
		t.Errorf("%d other mappings registered", others)
	}
	if n, err := DropCode(); err != nil || n == 0 {
		t.Errorf("DropCode after NoFaultAround: %d bytes, %v", n, err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if exe, others := uffdMappings(t); exe.registered != 0 || others != 0 {
		t.Errorf("after Close: %d of the executable's mappings and %d others still registered", exe.registered, others)
	}
}

type exeCount struct{ readOnly, registered int }

// uffdMappings counts the executable's read-only mappings and those of
// them registered with a userfaultfd, and the registered mappings that
// are not the executable's read-only ones.
func uffdMappings(t *testing.T) (exe exeCount, others int) {
	t.Helper()
	path, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	ours := false
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			ours = len(f) == 6 && f[5] == path && f[1][1] != 'w'
			if ours {
				exe.readOnly++
			}
			continue
		}
		if len(f) > 0 && f[0] == "VmFlags:" && strings.Contains(line, " uw") {
			if ours {
				exe.registered++
			} else {
				others++
			}
		}
	}
	return exe, others
}
