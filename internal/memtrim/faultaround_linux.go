//go:build linux && !android && (amd64 || arm64 || 386 || arm || riscv64 || loong64 || s390x)

package memtrim

import (
	"fmt"
	"io"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The userfaultfd ABI (linux/userfaultfd.h). The ioctl numbers are the
// generic _IOWR encoding, that of the architectures this file builds for.
const (
	uffdAPI            = 0xaa
	uffdUserModeOnly   = 1       // UFFD_USER_MODE_ONLY: no privilege needed
	uffdFeatureWPAsync = 1 << 15 // UFFD_FEATURE_WP_ASYNC (Linux 6.7)
	uffdRegisterModeWP = 1 << 1  // UFFDIO_REGISTER_MODE_WP
	uffdioAPI          = 3<<30 | 24<<16 | uffdAPI<<8 | 0x3f
	uffdioRegister     = 3<<30 | 32<<16 | uffdAPI<<8 // nr 0
)

// NoFaultAround stops the kernel from mapping up to 64 KiB of the
// executable around every page of it the program reads ("fault-around"):
// from then on, reading a page that is not mapped maps that page alone.
// A Go program reads its code and tables (.text, .rodata, .gopclntab)
// sparsely, one function's code here and another's frame table there, so
// with fault-around most of the executable it has resident it never
// read: 11.6 MiB of tunsocks after start-up and one connection, 3.3 MiB
// without. The cost is a minor fault for each page first read instead of
// one for up to 16 pages (about a thousand more at start-up, a fraction
// of a millisecond), and again after DropCode.
//
// It registers the executable's read-only mappings with a userfaultfd in
// asynchronous write-protect mode, for which the kernel does not fault
// around (Linux 6.7 and later). Nothing writes those mappings and nothing
// in them is write-protected, so no fault is ever reported or waited for;
// the registration only changes how reads map pages. The returned Closer
// holds it: closing ends it. Where the kernel lacks the feature, forbids
// userfaultfd (a seccomp filter), or on other systems, it returns an
// error and changes nothing.
func NoFaultAround() (io.Closer, error) {
	ms, err := exeMappings()
	if err != nil {
		return nil, err
	}
	var ro []mapping
	for _, m := range ms {
		if m.perms[1] != 'w' && m.perms[3] == 'p' {
			ro = append(ro, m)
		}
	}
	return noFaultAround(ro)
}

// noFaultAround registers ms with a new userfaultfd for asynchronous
// write protection, and returns the file that holds the registration.
func noFaultAround(ms []mapping) (*os.File, error) {
	fd, _, e := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK|uffdUserModeOnly, 0, 0)
	if e != 0 {
		return nil, fmt.Errorf("memtrim: userfaultfd: %w", e)
	}
	f := os.NewFile(fd, "userfaultfd")
	api := struct{ api, features, ioctls uint64 }{api: uffdAPI, features: uffdFeatureWPAsync}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, uffdioAPI, uintptr(unsafe.Pointer(&api))); e != 0 {
		f.Close()
		return nil, fmt.Errorf("memtrim: userfaultfd asynchronous write protection: %w", e)
	}
	for _, m := range ms {
		r := struct{ start, len, mode, ioctls uint64 }{start: m.start, len: m.end - m.start, mode: uffdRegisterModeWP}
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, uffdioRegister, uintptr(unsafe.Pointer(&r))); e != 0 {
			f.Close()
			return nil, fmt.Errorf("memtrim: userfaultfd register %#x-%#x: %w", m.start, m.end, e)
		}
	}
	return f, nil
}
