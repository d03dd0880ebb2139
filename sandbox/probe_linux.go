package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Probe reports what keeps env's user from building a rootless sandbox:
// user namespaces switched off (user.max_user_namespaces = 0, or Debian's
// kernel.unprivileged_userns_clone = 0), AppArmor's restriction of
// unprivileged user namespaces for an unconfined program (Ubuntu 23.10 and
// later), and a /dev/net/tun the user cannot open. It returns nil or a
// *BlockedError with the exact fix for each. It only reads files under
// env.Root; a blocker it cannot see (a seccomp filter, say) shows when the
// sandbox is started.
func Probe(env ProbeEnv) error {
	root := env.Root
	if root == "" {
		root = "/"
	}
	read := func(p string) (string, bool) {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			return "", false
		}
		return strings.TrimSpace(string(b)), true
	}
	const persist = "/etc/sysctl.d/99-tunsocks.conf"
	var bl []Blocker
	if v, ok := read("proc/sys/user/max_user_namespaces"); ok && v == "0" {
		bl = append(bl, Blocker{
			What: "user namespaces are switched off (user.max_user_namespaces = 0)",
			Fix:  "sudo sysctl -w user.max_user_namespaces=15000 (to keep it, add user.max_user_namespaces = 15000 to " + persist + ")",
		})
	}
	if v, ok := read("proc/sys/kernel/unprivileged_userns_clone"); ok && v == "0" {
		bl = append(bl, Blocker{
			What: "unprivileged user namespaces are switched off (kernel.unprivileged_userns_clone = 0)",
			Fix:  "sudo sysctl -w kernel.unprivileged_userns_clone=1 (to keep it, add kernel.unprivileged_userns_clone = 1 to " + persist + ")",
		})
	}
	if v, ok := read("proc/sys/kernel/apparmor_restrict_unprivileged_userns"); ok && v == "1" && apparmorUnconfined(read) {
		exe := env.Exe
		if exe == "" {
			exe = "/usr/local/bin/tunsocks"
		}
		bl = append(bl, Blocker{
			What: "AppArmor does not let unconfined programs use user namespaces (kernel.apparmor_restrict_unprivileged_userns = 1)",
			Fix: "allow it for tunsocks alone: write this profile to /etc/apparmor.d/tunsocks\n" +
				indent(apparmorProfile(exe), "  ") +
				"and load it: sudo apparmor_parser -r /etc/apparmor.d/tunsocks\n" +
				"or lift the restriction for every program: sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0",
		})
	}
	if b, ok := tunBlocker(filepath.Join(root, "dev/net/tun"), env); !ok {
		bl = append(bl, b)
	}
	if len(bl) == 0 {
		return nil
	}
	return &BlockedError{Blockers: bl}
}

// apparmorUnconfined reports whether this process runs unconfined by
// AppArmor (a profile may allow user namespaces; we cannot tell which).
func apparmorUnconfined(read func(string) (string, bool)) bool {
	label, ok := read("proc/self/attr/apparmor/current")
	if !ok {
		label, ok = read("proc/self/attr/current")
	}
	if !ok {
		return true
	}
	return label == "unconfined" || strings.HasPrefix(label, "unconfined ")
}

const tunUdevFix = "open it to every user with a udev rule:\n" +
	"echo 'KERNEL==\"tun\", MODE=\"0666\"' | sudo tee /etc/udev/rules.d/99-tun.rules\n" +
	"sudo udevadm control --reload-rules && sudo udevadm trigger --name-match=net/tun\n" +
	"(or until the next boot: sudo chmod 0666 /dev/net/tun)"

// tunBlocker checks that env's user may open path read-write.
func tunBlocker(path string, env ProbeEnv) (Blocker, bool) {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return Blocker{
			What: "/dev/net/tun does not exist (the tun module is not loaded)",
			Fix:  "sudo modprobe tun (to load it at boot: echo tun | sudo tee /etc/modules-load.d/tun.conf)",
		}, false
	}
	if err != nil {
		return Blocker{What: "/dev/net/tun: " + err.Error(), Fix: tunUdevFix}, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return Blocker{}, true
	}
	perm := uint32(fi.Mode().Perm())
	var class uint32 // the rw bits that apply to the user
	switch {
	case env.UID == 0:
		return Blocker{}, true
	case uint32(env.UID) == st.Uid:
		class = perm >> 6
	case uint32(env.GID) == st.Gid || slices.Contains(env.Groups, int(st.Gid)):
		class = perm >> 3
	default:
		class = perm
	}
	if class&6 == 6 {
		return Blocker{}, true
	}
	// An access ACL (systemd's uaccess, say) may grant what the mode does
	// not; the start will tell.
	if n, err := unix.Lgetxattr(path, "system.posix_acl_access", nil); err == nil && n > 0 {
		return Blocker{}, true
	}
	return Blocker{
		What: fmt.Sprintf("/dev/net/tun is not readable and writable by uid %d (mode %v, owner %d:%d)", env.UID, fi.Mode().Perm(), st.Uid, st.Gid),
		Fix:  tunUdevFix,
	}, false
}

func indent(s, prefix string) string {
	lines := strings.SplitAfter(s, "\n")
	var b strings.Builder
	for _, l := range lines {
		if l != "" {
			b.WriteString(prefix + l)
		}
	}
	return b.String()
}

// apparmorProfile is the profile that lets exe create user namespaces
// under kernel.apparmor_restrict_unprivileged_userns=1, as Ubuntu ships
// for other programs that need them.
func apparmorProfile(exe string) string {
	return "abi <abi/4.0>,\n" +
		"include <tunables/global>\n" +
		"profile tunsocks " + exe + " flags=(unconfined) {\n" +
		"  userns,\n" +
		"  include if exists <local/tunsocks>\n" +
		"}\n"
}
