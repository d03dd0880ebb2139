package main

import (
	"context"
	"strings"
	"testing"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

// TestRunLimitUsageErrors: the limit flags are checked before anything
// starts (no TUN is needed to see these errors).
func TestRunLimitUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--max-memory", "lots"}, `--max-memory: size "lots": want a number of bytes, or one with a unit like 512MiB`},
		{[]string{"--max-memory", "1MiB"}, "max-memory 1048576 bytes: want at least 64MiB, or 0 for none"},
		{[]string{"--udp-max-flows", "0"}, "--udp-max-flows 0: want a positive number"},
		{[]string{"--tcp-max-in-flight", "-5"}, "--tcp-max-in-flight -5: want a positive number"},
		{[]string{"--tcp-handshake-timeout", "0s"}, "--tcp-handshake-timeout 0s: want a positive duration"},
		{[]string{"--udp-flow-rate", "10", "--udp-flow-rate-per-source", "20"}, "udp-flow-rate-per-source 20 exceeds udp-flow-rate 10"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr testenv.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
			defer cancel()
			code := run(ctx, append([]string{"tunsocks", "run", "--proxy", "direct"}, tc.args...), &stdout, &stderr)
			if code != exitUsage || !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("exit %d, stderr:\n%s\nwant exit %d and %q", code, stderr.String(), exitUsage, tc.want)
			}
		})
	}
}
