package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// fakeRoot is a directory laid out like / for Probe: the sysctls and
// /dev/net/tun it reads.
type fakeRoot struct {
	t    *testing.T
	dir  string
	uid  int // owner of the files it makes
	gid  int
	user ProbeEnv
}

func newFakeRoot(t *testing.T) *fakeRoot {
	dir := t.TempDir()
	r := &fakeRoot{t: t, dir: dir, uid: os.Getuid(), gid: os.Getgid()}
	// The simulated user is neither the owner nor in the group of the
	// files the test makes.
	r.user = ProbeEnv{Root: dir, UID: r.uid + 1000, GID: r.gid + 1000, Groups: []int{r.gid + 2000}, Exe: "/usr/bin/tunsocks"}
	r.write("proc/sys/user/max_user_namespaces", "63000\n", 0o644)
	r.write("dev/net/tun", "", 0o666)
	return r
}

func (r *fakeRoot) write(path, content string, mode os.FileMode) {
	p := filepath.Join(r.dir, path)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		r.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		r.t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		r.t.Fatal(err)
	}
}

const (
	wantUserns = "  - user namespaces are switched off (user.max_user_namespaces = 0)\n" +
		"    fix: sudo sysctl -w user.max_user_namespaces=15000 (to keep it, add user.max_user_namespaces = 15000 to /etc/sysctl.d/99-tunsocks.conf)\n"
	wantClone = "  - unprivileged user namespaces are switched off (kernel.unprivileged_userns_clone = 0)\n" +
		"    fix: sudo sysctl -w kernel.unprivileged_userns_clone=1 (to keep it, add kernel.unprivileged_userns_clone = 1 to /etc/sysctl.d/99-tunsocks.conf)\n"
	wantAppArmor = "  - AppArmor does not let unconfined programs use user namespaces (kernel.apparmor_restrict_unprivileged_userns = 1)\n" +
		"    fix: allow it for tunsocks alone: write this profile to /etc/apparmor.d/tunsocks\n" +
		"      abi <abi/4.0>,\n" +
		"      include <tunables/global>\n" +
		"      profile tunsocks /usr/bin/tunsocks flags=(unconfined) {\n" +
		"        userns,\n" +
		"        include if exists <local/tunsocks>\n" +
		"      }\n" +
		"    and load it: sudo apparmor_parser -r /etc/apparmor.d/tunsocks\n" +
		"    or lift the restriction for every program: sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0\n"
	wantTunMissing = "  - /dev/net/tun does not exist (the tun module is not loaded)\n" +
		"    fix: sudo modprobe tun (to load it at boot: echo tun | sudo tee /etc/modules-load.d/tun.conf)\n"
	wantUdev = "    fix: open it to every user with a udev rule:\n" +
		"    echo 'KERNEL==\"tun\", MODE=\"0666\"' | sudo tee /etc/udev/rules.d/99-tun.rules\n" +
		"    sudo udevadm control --reload-rules && sudo udevadm trigger --name-match=net/tun\n" +
		"    (or until the next boot: sudo chmod 0666 /dev/net/tun)\n"
	wantHead = "this system does not let an unprivileged user build the sandbox:\n"
	wantTail = "Or run it with sudo: the command still runs as you (SUDO_UID and SUDO_GID), only the sandbox is built as root."
)

func TestProbe(t *testing.T) {
	cases := []struct {
		name  string
		setup func(r *fakeRoot)
		want  func(r *fakeRoot) string // "" when nothing blocks
	}{
		{"nothing blocks", func(r *fakeRoot) {}, nil},
		{"user namespaces off", func(r *fakeRoot) {
			r.write("proc/sys/user/max_user_namespaces", "0\n", 0o644)
		}, func(*fakeRoot) string { return wantUserns }},
		{"Debian's switch off", func(r *fakeRoot) {
			r.write("proc/sys/kernel/unprivileged_userns_clone", "0\n", 0o644)
		}, func(*fakeRoot) string { return wantClone }},
		{"Debian's switch on", func(r *fakeRoot) {
			r.write("proc/sys/kernel/unprivileged_userns_clone", "1\n", 0o644)
		}, nil},
		{"AppArmor restriction, unconfined", func(r *fakeRoot) {
			r.write("proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1\n", 0o644)
			r.write("proc/self/attr/apparmor/current", "unconfined\n", 0o644)
		}, func(*fakeRoot) string { return wantAppArmor }},
		{"AppArmor restriction, old attr file", func(r *fakeRoot) {
			r.write("proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1\n", 0o644)
			r.write("proc/self/attr/current", "unconfined\n", 0o644)
		}, func(*fakeRoot) string { return wantAppArmor }},
		{"AppArmor restriction, under a profile", func(r *fakeRoot) {
			r.write("proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1\n", 0o644)
			r.write("proc/self/attr/apparmor/current", "tunsocks (unconfined)\n", 0o644)
		}, nil},
		{"AppArmor restriction off", func(r *fakeRoot) {
			r.write("proc/sys/kernel/apparmor_restrict_unprivileged_userns", "0\n", 0o644)
		}, nil},
		{"no /dev/net/tun", func(r *fakeRoot) {
			os.Remove(filepath.Join(r.dir, "dev/net/tun"))
		}, func(*fakeRoot) string { return wantTunMissing }},
		{"/dev/net/tun root only", func(r *fakeRoot) {
			r.write("dev/net/tun", "", 0o600)
		}, func(r *fakeRoot) string {
			return fmt.Sprintf("  - /dev/net/tun is not readable and writable by uid %d (mode -rw-------, owner %d:%d)\n", r.user.UID, r.uid, r.gid) + wantUdev
		}},
		{"/dev/net/tun for its group, user in it", func(r *fakeRoot) {
			r.write("dev/net/tun", "", 0o660)
			r.user.Groups = append(r.user.Groups, r.gid)
		}, nil},
		{"/dev/net/tun for its group, user not in it", func(r *fakeRoot) {
			r.write("dev/net/tun", "", 0o660)
		}, func(r *fakeRoot) string {
			return fmt.Sprintf("  - /dev/net/tun is not readable and writable by uid %d (mode -rw-rw----, owner %d:%d)\n", r.user.UID, r.uid, r.gid) + wantUdev
		}},
		{"/dev/net/tun for its owner, the user", func(r *fakeRoot) {
			r.write("dev/net/tun", "", 0o600)
			r.user.UID = r.uid
		}, nil},
		{"everything at once", func(r *fakeRoot) {
			r.write("proc/sys/user/max_user_namespaces", "0\n", 0o644)
			r.write("proc/sys/kernel/unprivileged_userns_clone", "0\n", 0o644)
			r.write("proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1\n", 0o644)
			os.Remove(filepath.Join(r.dir, "dev/net/tun"))
		}, func(*fakeRoot) string { return wantUserns + wantClone + wantAppArmor + wantTunMissing }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newFakeRoot(t)
			c.setup(r)
			err := Probe(r.user)
			if c.want == nil {
				if err != nil {
					t.Fatalf("Probe: %v, want nothing blocking", err)
				}
				return
			}
			var be *BlockedError
			if !errors.As(err, &be) {
				t.Fatalf("Probe: %v, want a *BlockedError", err)
			}
			if want := wantHead + c.want(r) + wantTail; err.Error() != want {
				t.Errorf("message:\n%s\nwant:\n%s", err, want)
			}
		})
	}
}

// TestProbeRoot: root is never blocked by /dev/net/tun's mode.
func TestProbeRoot(t *testing.T) {
	r := newFakeRoot(t)
	r.write("dev/net/tun", "", 0o600)
	r.user.UID = 0
	if err := Probe(r.user); err != nil {
		t.Errorf("Probe as root: %v", err)
	}
}
