package main

import (
	"errors"
	"fmt"
	"os/exec"
	"os/user"
	"slices"
	"strconv"
	"strings"
)

// userDB is the user database exec asks for --user and for the user sudo
// was invoked by. A build with cgo asks the C library, which goes through
// NSS (LDAP, sssd, systemd's users, ...). The pure-Go os/user of a
// CGO_ENABLED=0 build (the README's build: no C library mapped, a smaller
// resident set) reads only /etc/passwd and /etc/group; there a user or
// group list os/user cannot give is asked of getent(1), which is the C
// library's NSS in a process of its own.
type userDB struct {
	// nss: os/user itself goes through NSS (a cgo build); getent is then
	// never run.
	nss bool
	// getent runs getent with args and returns its standard output.
	getent func(args ...string) ([]byte, error)
}

func newUserDB() userDB {
	return userDB{nss: osUserNSS, getent: runGetent}
}

func runGetent(args ...string) ([]byte, error) {
	out, err := exec.Command("getent", args...).Output()
	if err != nil {
		return nil, fmt.Errorf("getent %s: %w", strings.Join(args, " "), err)
	}
	return out, nil
}

// lookup finds a user by name.
func (db userDB) lookup(name string) (*user.User, error) {
	u, err := user.Lookup(name)
	if err == nil || db.nss || !errors.As(err, new(user.UnknownUserError)) {
		return u, err
	}
	if gu, gerr := db.passwd(name); gerr == nil && gu.Username == name {
		return gu, nil
	}
	return nil, err
}

// lookupID finds a user by numeric id.
func (db userDB) lookupID(uid string) (*user.User, error) {
	u, err := user.LookupId(uid)
	if err == nil || db.nss || !errors.As(err, new(user.UnknownUserIdError)) {
		return u, err
	}
	if gu, gerr := db.passwd(uid); gerr == nil && gu.Uid == uid {
		return gu, nil
	}
	return nil, err
}

// passwd asks getent for key's passwd entry.
func (db userDB) passwd(key string) (*user.User, error) {
	out, err := db.getent("passwd", key)
	if err != nil {
		return nil, err
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return parsePasswd(line)
}

// parsePasswd reads one passwd(5) line: name:password:uid:gid:gecos:home:shell.
func parsePasswd(line string) (*user.User, error) {
	f := strings.Split(line, ":")
	if len(f) != 7 || f[0] == "" {
		return nil, fmt.Errorf("passwd entry %q: want name:password:uid:gid:gecos:home:shell", line)
	}
	for _, id := range f[2:4] {
		if _, err := strconv.ParseUint(id, 10, 32); err != nil {
			return nil, fmt.Errorf("passwd entry %q: uid and gid must be numbers", line)
		}
	}
	gecos, _, _ := strings.Cut(f[4], ",")
	return &user.User{Username: f[0], Uid: f[2], Gid: f[3], Name: gecos, HomeDir: f[5]}, nil
}

// groupIDs lists u's groups as os/user does (its primary group
// included), nil when none are known. Without NSS in os/user, the groups
// getent's initgroups finds for the user are added to those of
// /etc/group.
func (db userDB) groupIDs(u *user.User) []string {
	ids, err := u.GroupIds()
	if err != nil {
		ids = nil
	}
	if !db.nss {
		// "name gid gid ...": the supplementary groups, whatever NSS
		// source has them (the primary group is not among them).
		if out, err := db.getent("initgroups", u.Username); err == nil {
			line, _, _ := strings.Cut(string(out), "\n")
			if f := strings.Fields(line); len(f) > 1 && f[0] == u.Username {
				ids = append(append(ids, u.Gid), f[1:]...)
			}
		}
	}
	var out []string
	for _, id := range ids {
		if _, err := strconv.ParseUint(id, 10, 32); err == nil && !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}
