package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"os/exec"
	"strings"
	"testing"
)

// SystemUser creates a throwaway system user with a password (for Dante's
// username method) and removes it when the test ends. It needs root and
// useradd, chpasswd and userdel.
func SystemUser(t testing.TB) (user, pass string) {
	t.Helper()
	NeedRoot(t, "useradd/chpasswd for a throwaway user")
	for _, tool := range []string{"useradd", "chpasswd", "userdel"} {
		NeedTool(t, tool, "passwd")
	}
	b := make([]byte, 4)
	rand.Read(b)
	user = "tsk" + hex.EncodeToString(b)
	rand.Read(b)
	pass = "pw-" + hex.EncodeToString(b)
	if out, err := exec.Command("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", user).CombinedOutput(); err != nil {
		t.Fatalf("useradd %s: %v\n%s", user, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("userdel", user).CombinedOutput(); err != nil {
			t.Errorf("userdel %s: %v\n%s", user, err, out)
		}
	})
	cmd := exec.Command("chpasswd")
	cmd.Stdin = strings.NewReader(user + ":" + pass + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("chpasswd: %v\n%s", err, out)
	}
	return user, pass
}
