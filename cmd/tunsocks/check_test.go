package main

import (
	"context"
	"strings"
	"testing"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

func TestFirstNameserver(t *testing.T) {
	for in, want := range map[string]string{
		"nameserver 127.0.0.53\nnameserver 10.0.0.2\n": "10.0.0.2:53",
		"# c\nsearch lan\nnameserver 2001:db8::53\n":   "[2001:db8::53]:53",
		"nameserver fe80::1%eth0\nnameserver ::1\n":    "",
		"options edns0\n": "",
		"nameserver 0.0.0.0\nnameserver bogus\nnameserver": "",
	} {
		if got := firstNameserver(strings.NewReader(in)); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}

func TestCheckAndServerUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"check"}, "needs one proxy URL"},
		{[]string{"check", "a", "b"}, "needs one proxy URL"},
		{[]string{"check", "localhost:1080"}, "want scheme://"},
		{[]string{"check", "ftp://h:1"}, `scheme "ftp"`},
		{[]string{"check", "--rounds", "-1", "socks5://h:1"}, "--rounds"},
		{[]string{"check", "--timeout", "0s", "socks5://h:1"}, "--timeout"},
		{[]string{"check", "--idle", "-1s", "socks5://h:1"}, "--idle"},
		{[]string{"check", "--target", "nohost", "socks5://h:1"}, "want host:port"},
		{[]string{"check", "--stun", "nope", "socks5://h:1"}, "STUN server"},
		{[]string{"server", "--stun", "10.0.0.1:3478"}, "want two addresses"},
		{[]string{"server", "--stun", "10.0.0.1:3478,10.0.0.1:3479"}, "different IPs"},
		{[]string{"server", "--test-udp-mapping", "cone"}, "--test-udp-mapping"},
		{[]string{"server", "--test-accept-bad-password"}, "needs users"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr testenv.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
			defer cancel()
			code := run(ctx, append([]string{"tunsocks"}, tc.args...), &stdout, &stderr)
			if code != exitUsage || !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("exit %d, stderr:\n%s\nwant exit %d and %q", code, stderr.String(), exitUsage, tc.want)
			}
		})
	}
}
