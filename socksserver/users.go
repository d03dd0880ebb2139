package socksserver

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

// maxUsersLine bounds one line of a users file.
const maxUsersLine = 4096

// LoadUsers reads "user:pass" lines from r; blank lines and lines starting
// with '#' are skipped, and surrounding white space is trimmed from each
// line (not from inside it). The password is everything after the first
// colon. name is the file's name for error messages, which say
// "name:line: ...". A user listed twice is an error.
func LoadUsers(r io.Reader, name string) (map[string]string, error) {
	users := map[string]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 512), maxUsersLine)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		user, pass, ok := strings.Cut(text, ":")
		switch {
		case !ok:
			return nil, fmt.Errorf("%s:%d: want user:password", name, line)
		case len(user) == 0 || len(user) > 255:
			return nil, fmt.Errorf("%s:%d: the username must be 1 to 255 bytes (RFC 1929)", name, line)
		case len(pass) == 0 || len(pass) > 255:
			return nil, fmt.Errorf("%s:%d: the password of %q must be 1 to 255 bytes (RFC 1929)", name, line, user)
		}
		if _, dup := users[user]; dup {
			return nil, fmt.Errorf("%s:%d: user %q is listed twice", name, line, user)
		}
		users[user] = pass
	}
	if err := sc.Err(); err != nil {
		if err == bufio.ErrTooLong {
			return nil, fmt.Errorf("%s:%d: line longer than %d bytes", name, line+1, maxUsersLine)
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return users, nil
}
