package router

import (
	"bytes"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestFinishLogs: a finished flow is logged at debug level when it ended
// normally and at info level when it failed, with its attributes; below
// the logger's level finish builds nothing (no allocation).
func TestFinishLogs(t *testing.T) {
	rec := FlowRecord{Network: "tcp", Src: netip.MustParseAddrPort("10.0.0.2:40000"),
		Dst: netip.MustParseAddrPort("203.0.113.1:80"), Outbound: "proxy", Up: 5, Down: 7,
		Host: "example.com", Start: time.Now()}
	failed := rec
	failed.Err = errors.New("upstream refused")

	var buf bytes.Buffer
	r, err := New(Config{Decide: Static(nil), Logger: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	if err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { r.finish(rec) }); n != 0 {
		t.Errorf("finish of an ordinary flow below debug level: %v allocations, want 0", n)
	}
	if buf.Len() != 0 {
		t.Errorf("ordinary flow logged at info level: %q", buf.String())
	}
	r.finish(failed)
	if got := buf.String(); !strings.Contains(got, "level=INFO msg=\"flow failed\" net=tcp src=10.0.0.2:40000 dst=203.0.113.1:80 outbound=proxy up=5 down=7") ||
		!strings.Contains(got, "host=example.com") || !strings.Contains(got, `err="upstream refused"`) {
		t.Errorf("failed flow logged as %q", got)
	}

	buf.Reset()
	r.log = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r.finish(rec)
	if got := buf.String(); !strings.Contains(got, "level=DEBUG msg=flow net=tcp src=10.0.0.2:40000 dst=203.0.113.1:80 outbound=proxy up=5 down=7 dur=") ||
		!strings.Contains(got, "host=example.com") || strings.Contains(got, "err=") {
		t.Errorf("ordinary flow logged at debug level as %q", got)
	}
}
