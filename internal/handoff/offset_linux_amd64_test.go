package handoff

import (
	"debug/dwarf"
	"debug/elf"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"unsafe"
)

// addrOfSpinning is gVisor's address of runtime.sched.nmspinning, the
// word Hold and Release adjust: runtime.sched plus an offset gVisor
// hard-codes for amd64.
//
//go:linkname addrOfSpinning gvisor.dev/gvisor/pkg/sync.addrOfSpinning
func addrOfSpinning() *int32

// The word gVisor's helpers (and so Hold and Release) adjust is the
// runtime's count of spinning threads in this toolchain's runtime: the
// test binary's own symbol table and debug information say where
// runtime.sched is and where nmspinning lies in it. A toolchain that
// moved the field fails here rather than in production, where Hold
// would corrupt another scheduler field.
//
// go test strips its binaries of both: then the test builds the package's
// test binary with them (go test -c) and runs itself there.
func TestGVisorSpinningIsTheRuntimes(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if errors.Is(err, elf.ErrNoSymbols) && os.Getenv(childEnv) == "" {
		f.Close()
		runWithSymbols(t)
		return
	}
	if err != nil {
		t.Fatalf("symbols of %s: %v", exe, err)
	}
	var sched, self uint64
	selfName := "github.com/tunsocks/tunsocks/internal/handoff.TestGVisorSpinningIsTheRuntimes"
	for _, s := range syms {
		switch s.Name {
		case "runtime.sched":
			sched = s.Value
		case selfName:
			self = s.Value
		}
	}
	if sched == 0 || self == 0 {
		t.Fatalf("no symbol runtime.sched (%#x) or %s (%#x) in %s", sched, selfName, self, exe)
	}
	d, err := f.DWARF()
	if err != nil {
		t.Fatalf("debug information of %s: %v", exe, err)
	}
	off, ok := fieldOffset(t, d, "runtime.schedt", "nmspinning")
	if !ok {
		t.Fatal("no field nmspinning in runtime.schedt")
	}
	// The binary may be loaded elsewhere than linked (PIE).
	bias := uint64(reflect.ValueOf(TestGVisorSpinningIsTheRuntimes).Pointer()) - self
	want := uintptr(sched + bias + off)
	if got := uintptr(unsafe.Pointer(addrOfSpinning())); got != want {
		t.Errorf("gVisor adjusts %#x, runtime.sched.nmspinning is at %#x (runtime.sched %#x + %d): Hold must not be used with this toolchain", got, want, sched+bias, off)
	}
}

// fieldOffset finds field's offset in the struct type named typ.
func fieldOffset(t *testing.T, d *dwarf.Data, typ, field string) (uint64, bool) {
	r := d.Reader()
	for {
		e, err := r.Next()
		if err != nil {
			t.Fatalf("reading debug information: %v", err)
		}
		if e == nil {
			return 0, false
		}
		if e.Tag != dwarf.TagStructType || e.Val(dwarf.AttrName) != typ {
			if e.Tag != dwarf.TagCompileUnit {
				r.SkipChildren()
			}
			continue
		}
		for {
			c, err := r.Next()
			if err != nil || c == nil || c.Tag == 0 {
				return 0, false
			}
			if c.Val(dwarf.AttrName) == field {
				off, ok := c.Val(dwarf.AttrDataMemberLoc).(int64)
				return uint64(off), ok
			}
		}
	}
}

// childEnv marks the test binary runWithSymbols built and runs.
const childEnv = "HANDOFF_TEST_WITH_SYMBOLS"

// runWithSymbols builds this package's test binary with its symbols and
// debug information and runs the calling test in it.
func runWithSymbols(t *testing.T) {
	gocmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the test binary has no symbols, and no go command builds one: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "handoff.test")
	build := exec.Command(gocmd, "test", "-c", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", build.Args, err, out)
	}
	run := exec.Command(bin, "-test.run=^"+t.Name()+"$", "-test.v")
	run.Env = append(os.Environ(), childEnv+"=1")
	out, err := run.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Errorf("%s with symbols: %v\n%s", t.Name(), err, out)
	}
}
