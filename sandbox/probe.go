package sandbox

import "strings"

// ProbeEnv is what Probe looks at.
type ProbeEnv struct {
	// Root is the filesystem root /proc/sys and /dev/net/tun are read
	// under: "/" on a real system, a prepared directory in tests.
	Root string
	// UID, GID and Groups are who would build the sandbox.
	UID, GID int
	Groups   []int
	// Exe is the tunsocks binary, named in the AppArmor profile.
	Exe string
}

// Blocker is one reason an unprivileged user cannot build the sandbox, and
// how to lift it.
type Blocker struct {
	What string // what blocks, with the setting's value
	Fix  string // the exact commands or lines that lift it
}

// BlockedError lists every blocker Probe found.
type BlockedError struct {
	Blockers []Blocker
}

func (e *BlockedError) Error() string {
	var b strings.Builder
	b.WriteString("this system does not let an unprivileged user build the sandbox:\n")
	for _, bl := range e.Blockers {
		b.WriteString("  - ")
		b.WriteString(bl.What)
		b.WriteString("\n    fix: ")
		b.WriteString(strings.ReplaceAll(bl.Fix, "\n", "\n    "))
		b.WriteString("\n")
	}
	b.WriteString("Or run it with sudo: the command still runs as you (SUDO_UID and SUDO_GID), only the sandbox is built as root.")
	return b.String()
}
