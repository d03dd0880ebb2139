package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// SocketDir is where named sandboxes publish their join sockets:
// /run/tunsocks for root, $XDG_RUNTIME_DIR/tunsocks for other users.
func SocketDir(uid int, getenv func(string) string) (string, error) {
	if uid == 0 {
		return "/run/tunsocks", nil
	}
	d := getenv("XDG_RUNTIME_DIR")
	if d == "" {
		return "", errors.New("$XDG_RUNTIME_DIR is not set; it says where a named exec's socket lives (usually /run/user/" + strconv.Itoa(uid) + ")")
	}
	return filepath.Join(d, "tunsocks"), nil
}

// CheckName validates a sandbox name: 1 to 64 letters, digits, '.', '_'
// or '-', not starting with '.'.
func CheckName(name string) error {
	ok := name != "" && len(name) <= 64 && name[0] != '.'
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			ok = false
		}
	}
	if !ok {
		return fmt.Errorf("name %q: want 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'", name)
	}
	return nil
}

// FindJoin returns the socket of the sandbox named name that a process of
// uid can join: in SocketDir for uid, then in root's.
func FindJoin(name string, uid int, getenv func(string) string) (string, error) {
	if err := CheckName(name); err != nil {
		return "", err
	}
	var dirs []string
	if d, err := SocketDir(uid, getenv); err == nil {
		dirs = append(dirs, d)
	}
	if uid != 0 {
		d, _ := SocketDir(0, getenv)
		dirs = append(dirs, d)
	}
	var looked []string
	for _, d := range dirs {
		p := filepath.Join(d, name+".sock")
		if _, err := os.Lstat(p); err == nil {
			return p, nil
		}
		looked = append(looked, p)
	}
	return "", fmt.Errorf("no exec named %q is running (looked for %s)", name, strings.Join(looked, " and "))
}

// JoinSpec is a command to run in a published sandbox.
type JoinSpec struct {
	Path string   // executable; "" looks Args[0] up in the PATH of Env
	Args []string // argv
	Env  []string
	Dir  string
	// Cred is who the command runs as when the joiner is root and the
	// sandbox is not rootless; nil: root. Ignored otherwise (the command
	// runs as the joiner).
	Cred                  *Cred
	Stdin, Stdout, Stderr *os.File // nil: /dev/null
}

// ErrEnded is wrapped by Joined.Wait when the sandbox ended (its command
// exited or its caller died) and took the joined command with it.
var ErrEnded = errors.New("the exec it joined has ended")
