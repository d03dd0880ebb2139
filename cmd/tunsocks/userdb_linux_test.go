package main

import (
	"errors"
	"fmt"
	"os/user"
	"slices"
	"strings"
	"testing"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

func TestParsePasswd(t *testing.T) {
	u, err := parsePasswd("alice:x:1001:1002:Alice A,Room 1,,:/home/alice:/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	want := user.User{Username: "alice", Uid: "1001", Gid: "1002", Name: "Alice A", HomeDir: "/home/alice"}
	if *u != want {
		t.Errorf("parsed %+v, want %+v", *u, want)
	}
	for _, bad := range []string{"", "alice:x:1001:1002:Alice:/home/alice", "alice:x:uid:1002::/h:/bin/sh", ":x:1:1::/h:/bin/sh", "alice:x:1:-1::/h:/bin/sh"} {
		if u, err := parsePasswd(bad); err == nil {
			t.Errorf("parsePasswd(%q) = %+v, want an error", bad, u)
		}
	}
}

// fakeGetent answers like getent for one user known only to NSS, and
// records what it was asked.
type fakeGetent struct{ asked []string }

const nssUser = "tsnss-only-user"

func (f *fakeGetent) run(args ...string) ([]byte, error) {
	f.asked = append(f.asked, strings.Join(args, " "))
	switch strings.Join(args, " ") {
	case "passwd " + nssUser, "passwd 424242":
		return []byte(nssUser + ":*:424242:434343:NSS only,,,:/home/nss:/bin/sh\n"), nil
	case "initgroups " + nssUser:
		return []byte(nssUser + "          434344 434345\n"), nil
	case "passwd 424243":
		// Another entry than the one asked for.
		return []byte("someone:*:1:1::/:/bin/sh\n"), nil
	}
	return nil, fmt.Errorf("getent %s: exit status 2", strings.Join(args, " "))
}

// TestUserDBAsksNSSThroughGetent: without NSS in os/user (a CGO_ENABLED=0
// build), a user only NSS knows is found through getent, by name and by
// id, with its groups; with NSS in os/user getent is never run.
func TestUserDBAsksNSSThroughGetent(t *testing.T) {
	if _, err := user.Lookup(nssUser); err == nil {
		t.Skipf("%s exists on this host", nssUser)
	}
	f := &fakeGetent{}
	db := userDB{nss: false, getent: f.run}
	u, err := db.lookup(nssUser)
	if err != nil {
		t.Fatalf("lookup: %v", err)
	}
	if u.Uid != "424242" || u.Gid != "434343" || u.HomeDir != "/home/nss" || u.Username != nssUser {
		t.Errorf("lookup gave %+v", *u)
	}
	if u, err := db.lookupID("424242"); err != nil || u.Username != nssUser {
		t.Errorf("lookupID(424242) = %+v, %v", u, err)
	}
	if got := db.groupIDs(u); !slices.Equal(got, []string{"434343", "434344", "434345"}) {
		t.Errorf("groups %v, want the primary group and initgroups' two", got)
	}
	// An answer for someone else is no answer; the error stays os/user's.
	if u, err := db.lookupID("424243"); err == nil || !errors.As(err, new(user.UnknownUserIdError)) {
		t.Errorf("lookupID(424243) = %+v, %v; want user.UnknownUserIdError", u, err)
	}
	if _, err := db.lookup("tsnss-nobody"); !errors.As(err, new(user.UnknownUserError)) {
		t.Errorf("lookup of a user nobody knows: %v, want user.UnknownUserError", err)
	}

	f.asked = nil
	withNSS := userDB{nss: true, getent: f.run}
	if u, err := withNSS.lookup(nssUser); err == nil {
		t.Errorf("with NSS in os/user, lookup found %+v through the fake", *u)
	}
	withNSS.groupIDs(&user.User{Username: nssUser, Uid: "424242", Gid: "434343"})
	if len(f.asked) != 0 {
		t.Errorf("with NSS in os/user getent was run: %q", f.asked)
	}
}

// TestUserDBRealGetent: the real getent's passwd entry parses.
func TestUserDBRealGetent(t *testing.T) {
	testenv.NeedTool(t, "getent", "libc-bin")
	db := newUserDB()
	u, err := db.passwd("0")
	if err != nil {
		t.Fatal(err)
	}
	if u.Uid != "0" || u.Username == "" {
		t.Errorf("getent passwd 0 gave %+v", *u)
	}
}
