package main

import (
	"bytes"
	"context"
	"runtime"
	"strings"
	"testing"
)

// TestRouteUsageErrors: bad route flags are usage errors (exit 2) that
// name what would be right, found before anything is created.
func TestRouteUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--auto-route", "--exclude", "10.0.0.300/8"}, "--exclude \"10.0.0.300/8\": want a CIDR"},
		{[]string{"--auto-route", "--exclude-uid", "5-3"}, "want N or N-M with N <= M"},
		{[]string{"--auto-route", "--include-uid", "x"}, "want N or N-M"},
		{[]string{"--auto-route", "--dns-config", "systemd"}, "want auto, resolved or none"},
		{[]string{"--include-uid", "1000"}, "set route.auto-route: true"},
		{[]string{"--auto-route", "--route-table", "254"}, "that is a table of the system"},
		{[]string{"--auto-route", "--tun-fd", "3"}, "with --tun-fd the owner of the descriptor routes"},
	} {
		var stdout, stderr bytes.Buffer
		args := append([]string{"tunsocks", "run", "--proxy", "direct", "--state-dir", t.TempDir()}, tc.args...)
		code := run(context.Background(), args, &stdout, &stderr)
		if code != exitUsage || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("run %v: exit %d, stderr %q; want exit %d and %q", tc.args, code, stderr.String(), exitUsage, tc.want)
		}
	}
}

// TestCleanupAndExplainRouteWithNothingInstalled: with no run's state,
// cleanup and explain --route say so and succeed.
func TestCleanupAndExplainRouteWithNothingInstalled(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("host routing is Linux-only")
	}
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"tunsocks", "cleanup", "--state-dir", dir}, &stdout, &stderr); code != exitOK || !strings.Contains(stdout.String(), "nothing to clean up") {
		t.Errorf("cleanup: exit %d, %q %q", code, stdout.String(), stderr.String())
	}
	stdout.Reset()
	if code := run(context.Background(), []string{"tunsocks", "explain", "--route", "192.0.2.1:80", "--state-dir", dir}, &stdout, &stderr); code != exitOK || !strings.Contains(stdout.String(), "no tunsocks run routes this host") {
		t.Errorf("explain --route: exit %d, %q %q", code, stdout.String(), stderr.String())
	}
	stderr.Reset()
	if code := run(context.Background(), []string{"tunsocks", "explain", "example.com:443"}, &stdout, &stderr); code != exitUsage || !strings.Contains(stderr.String(), "--route HOST:PORT") {
		t.Errorf("explain without --config or --route: exit %d, %q", code, stderr.String())
	}
}
