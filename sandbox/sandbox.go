// Package sandbox runs one command, and everything it starts, in new
// network, mount and PID namespaces whose only way out is a TUN device that
// the calling process serves: the sandbox of `tunsocks exec`.
//
// Start re-executes the running binary (/proc/self/exe) as a hidden init
// (argv[1] == InitArg; main hands such a process to RunInit before anything
// else). The init is PID 1 of a new PID namespace, in a new network and mount
// namespace and, when Spec.Rootless is set, a new user namespace that maps
// only the caller's uid and gid. Inside it brings lo up, creates the TUN
// (addresses, MTU, IPv4 and IPv6 default routes), and passes its descriptor
// back over a Unix socket (SCM_RIGHTS) together with a sock_diag socket of
// the namespace (for process lookups). The caller serves the TUN from the
// namespace it runs in, so its own sockets leave by the host's network and
// cannot loop. The init then makes every mount private, points
// /etc/resolv.conf (through a bind mount over the file a symlink leads to)
// at the caller's DNS, hides the resolver sockets that do not care about
// network namespaces (systemd-resolved's, nscd's, avahi's) under empty
// tmpfs mounts, mounts a /proc for the new PID namespace, and waits for Run.
//
// Run starts the command as a child of the init with no capabilities
// (ambient, inheritable and bounding sets empty) and no_new_privs set, as
// the caller (Spec.Cred for root). The init reaps every orphan, passes on
// the signals the caller forwards, and exits when the command does: the
// kernel then kills whatever the command left in the PID namespace, and
// Wait returns once all of it is gone. When the caller dies, the TUN goes
// with its descriptor (the command's next connect fails with ENETUNREACH,
// nothing can leave another way) and the init hangs the command up
// (SIGHUP).
//
// Nothing is installed on the host: the namespaces, the TUN and the mounts
// exist only as long as the processes that hold them. Everything here is
// Linux-only; elsewhere Start returns ErrUnsupported.
package sandbox

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"syscall"
)

// InitArg is argv[1] of a re-executed binary that is a sandbox's init.
const InitArg = "__tunsocks-sandbox-init"

// IsInit reports whether a process started with args is a sandbox's init;
// main must then call RunInit and exit with its result before doing
// anything else.
func IsInit(args []string) bool { return len(args) > 1 && args[1] == InitArg }

// ErrUnsupported is returned on systems without Linux namespaces.
var ErrUnsupported = errors.New("sandbox: Linux namespaces are needed")

// Cred is who the command runs as.
type Cred struct {
	UID, GID uint32
	Groups   []uint32 // supplementary groups
}

// TunSpec is the TUN device inside the sandbox.
type TunSpec struct {
	Name    string         // device name; "" lets the kernel choose (tunN)
	Addrs   []netip.Prefix // its addresses; a default route is added for each family
	MTU     int            // 0: 1500
	Offload bool           // IFF_VNET_HDR (TSO/GRO); see tun.Config.Offload
}

// Spec is one sandbox.
type Spec struct {
	// Path is the command's executable; "" looks Args[0] up in the PATH
	// of Env.
	Path string
	// Args is the command's argv; Args[0] is the name it sees.
	Args []string
	// Env is the command's environment; nil passes none.
	Env []string
	// Dir is the command's working directory; "" keeps the caller's.
	Dir string
	// Stdin, Stdout and Stderr are the command's (nil: /dev/null).
	Stdin, Stdout, Stderr *os.File

	// Rootless adds a user namespace mapping only the caller's uid and
	// gid, for a caller without privileges. The command keeps the
	// caller's identity; Cred must be nil.
	Rootless bool
	// Cred, for a root caller, is who the command runs as (its groups
	// included); nil keeps root, without any capability.
	Cred *Cred

	Tun TunSpec
	// ResolvConf, when not "", becomes the content of /etc/resolv.conf
	// inside (bind-mounted over the file it is, or leads to).
	ResolvConf string
	// Mask lists directories hidden under an empty tmpfs inside, those
	// that do not exist skipped; DefaultMask hides the host resolver's
	// Unix sockets.
	Mask []string

	// resolvPath is the resolv.conf to replace, for tests; "" is
	// /etc/resolv.conf.
	resolvPath string

	// Exe is the binary re-executed as the init; "" means /proc/self/exe.
	// Its main must hand InitArg processes to RunInit.
	Exe string
	// Logger gets debug lines; nil discards them.
	Logger *slog.Logger
}

// DefaultMask are the directories of resolver sockets that a process
// reaches whatever its network namespace: systemd-resolved's varlink socket
// (glibc's nss-resolve), nscd's socket and avahi's (nss-mdns). Hidden, glibc
// falls back to plain DNS through the TUN.
var DefaultMask = []string{
	"/run/systemd/resolve",
	"/run/nscd", "/var/run/nscd",
	"/run/avahi-daemon", "/var/run/avahi-daemon",
}

// ResolvConf is a resolv.conf naming servers, in order.
func ResolvConf(servers ...netip.Addr) string {
	var b strings.Builder
	b.WriteString("# written by tunsocks exec: every lookup goes through tunsocks\n")
	for _, s := range servers {
		if s.IsValid() {
			fmt.Fprintf(&b, "nameserver %s\n", s)
		}
	}
	return b.String()
}

// Exit is how the command ended.
type Exit struct {
	Code   int            // exit status when it exited
	Signal syscall.Signal // the signal that killed it; 0 when it exited
}

// ExitCode is the status a shell reports: Code, or 128 + the signal.
func (e Exit) ExitCode() int {
	if e.Signal != 0 {
		return 128 + int(e.Signal)
	}
	return e.Code
}

func (e Exit) String() string {
	if e.Signal != 0 {
		return "killed by signal " + e.Signal.String()
	}
	return fmt.Sprintf("exit status %d", e.Code)
}
