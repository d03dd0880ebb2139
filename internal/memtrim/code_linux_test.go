package memtrim

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// mappingOf finds the mapping that starts at addr in this process's smaps.
func mappingOf(t *testing.T, addr uintptr) mapping {
	t.Helper()
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	ms, err := parseSmaps(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.start == uint64(addr) {
			return m
		}
	}
	t.Fatalf("no mapping at %#x", addr)
	return mapping{}
}

// mapFile maps a fresh 256 KiB file of a known pattern with prot, privately.
func mapFile(t *testing.T, prot int) ([]byte, uint64) {
	t.Helper()
	content := bytes.Repeat([]byte("tunsocks"), 256<<10/8)
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Written back, so no page is locked for writeback when a test
	// counts what a read maps.
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	b, err := unix.Mmap(int(f.Fd()), 0, len(content), prot, unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Munmap(b) })
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return b, st.Ino
}

func addrOf(b []byte) uintptr { return uintptr(unsafePointer(b)) }

// TestDropCleanUnmapsOnlyCleanReadOnlyPages: a read-only private file
// mapping loses its resident pages and reads the same afterwards; a
// writable one, and a read-only one holding a page written before it was
// made read-only, keep theirs, with the written bytes.
func TestDropCleanUnmapsOnlyCleanReadOnlyPages(t *testing.T) {
	ro, roIno := mapFile(t, unix.PROT_READ)
	rw, rwIno := mapFile(t, unix.PROT_READ|unix.PROT_WRITE)
	cow, cowIno := mapFile(t, unix.PROT_READ|unix.PROT_WRITE)
	var sum int
	for i := 0; i < len(ro); i += 4096 {
		sum += int(ro[i]) // fault every page in
	}
	if sum != len(ro)/4096*int('t') {
		t.Fatalf("read %d, want %d", sum, len(ro)/4096*int('t'))
	}
	rw[0] = 'X'
	cow[4096] = 'Y'
	if err := unix.Mprotect(cow, unix.PROT_READ); err != nil {
		t.Fatal(err)
	}
	before := map[string]mapping{"ro": mappingOf(t, addrOf(ro)), "rw": mappingOf(t, addrOf(rw)), "cow": mappingOf(t, addrOf(cow))}
	if before["ro"].rss == 0 || before["rw"].anon == 0 || before["cow"].anon == 0 || before["cow"].perms[1] != '-' {
		t.Fatalf("set-up: mappings %+v", before)
	}
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	ms, err := parseSmaps(b)
	if err != nil {
		t.Fatal(err)
	}
	ours := func(m mapping) bool { return m.inode == roIno || m.inode == rwIno || m.inode == cowIno }
	n, err := dropClean(ms, ours)
	if err != nil {
		t.Fatal(err)
	}
	if n != before["ro"].rss {
		t.Errorf("dropClean reported %d bytes, want the read-only mapping's %d", n, before["ro"].rss)
	}
	if m := mappingOf(t, addrOf(ro)); m.rss != 0 {
		t.Errorf("read-only mapping still has %d bytes resident", m.rss)
	}
	if m := mappingOf(t, addrOf(rw)); m.rss != before["rw"].rss {
		t.Errorf("writable mapping: %d bytes resident, had %d", m.rss, before["rw"].rss)
	}
	if m := mappingOf(t, addrOf(cow)); m.rss != before["cow"].rss {
		t.Errorf("read-only mapping with a private page: %d bytes resident, had %d", m.rss, before["cow"].rss)
	}
	if rw[0] != 'X' || cow[4096] != 'Y' {
		t.Errorf("written bytes lost: %q %q", rw[0], cow[4096])
	}
	if !bytes.Equal(ro[:16], []byte("tunsockstunsocks")) || ro[len(ro)-1] != 's' {
		t.Errorf("the dropped mapping reads %q... afterwards", ro[:16])
	}
}

// TestDropCodeShrinksTheResidentSet: the test binary's own code, resident
// after start-up, leaves the resident set, and the process runs on.
func TestDropCodeShrinksTheResidentSet(t *testing.T) {
	before := rssFile(t)
	n, err := DropCode()
	if err != nil {
		t.Fatal(err)
	}
	after := rssFile(t)
	if n < 1<<20 {
		t.Errorf("DropCode unmapped %d bytes of the test binary, want at least 1 MiB", n)
	}
	if after >= before {
		t.Errorf("RssFile %d kB after DropCode, %d kB before", after, before)
	}
	t.Logf("RssFile %d kB -> %d kB; DropCode reported %d kB", before, after, n>>10)
}

// rssFile is this process's RssFile in kB.
func rssFile(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "RssFile:"); ok {
			var kb uint64
			for _, c := range strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")) {
				kb = kb*10 + uint64(c-'0')
			}
			return kb
		}
	}
	t.Fatal("no RssFile in /proc/self/status")
	return 0
}

func TestParseSmaps(t *testing.T) {
	const in = `00400000-00d3b000 r-xp 00000000 fd:01 1234567                            /usr/bin/tunsocks
Size:               9452 kB
Rss:                8172 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me
7ffe6e339000-7ffe6e35a000 rw-p 00000000 00:00 0                          [stack]
Rss:                  16 kB
Anonymous:            16 kB
7fd04b6ad000-7fd04b6d3000 r--p 00000000 103:0a 99 /path with space/lib.so
Rss:                 152 kB
`
	ms, err := parseSmaps([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []mapping{
		{start: 0x400000, end: 0xd3b000, perms: "r-xp", devMajor: 0xfd, devMinor: 1, inode: 1234567, rss: 8172 << 10},
		{start: 0x7ffe6e339000, end: 0x7ffe6e35a000, perms: "rw-p", rss: 16 << 10, anon: 16 << 10},
		{start: 0x7fd04b6ad000, end: 0x7fd04b6d3000, perms: "r--p", devMajor: 0x103, devMinor: 0xa, inode: 99, rss: 152 << 10},
	}
	if len(ms) != len(want) {
		t.Fatalf("got %d mappings, want %d: %+v", len(ms), len(want), ms)
	}
	for i := range want {
		if ms[i] != want[i] {
			t.Errorf("mapping %d = %+v, want %+v", i, ms[i], want[i])
		}
	}
	for _, bad := range []string{"00400000 r-xp 0 fd:01 1 /x\n", "zz-00d3b000 r-xp 0 fd:01 1 /x\n", "00400000-00d3b000 r-xp 0 fd01 1 /x\n", "2000-1000 r-xp 0 fd:01 1 /x\n"} {
		if _, err := parseSmaps([]byte(bad)); err == nil {
			t.Errorf("parseSmaps(%q) accepted it", bad)
		}
	}
}
