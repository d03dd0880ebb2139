package e2e

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tunsocks/tunsocks/internal/chromium"
	"github.com/tunsocks/tunsocks/internal/testenv"
)

// TestUIInLab opens /ui/ in headless chromium inside the app host while
// flows run there: the page lists them with their process and rule, and
// its close button resets one (the app, socat, sees the reset and exits).
// The screenshot is written to $TUNSOCKS_ARTIFACTS (and, when
// TUNSOCKS_UI_SCREENSHOT names a file, there too: the README's picture).
func TestUIInLab(t *testing.T) {
	socat := testenv.NeedTool(t, "socat", "socat")
	ncat := testenv.NeedTool(t, "ncat", "ncat")
	a := newAPIEnv(t)
	echo := netip.AddrPortFrom(remote4, echoPort)
	// Two apps holding a connection open: socat (its other side a sleep;
	// -d logs the reset it will read) and ncat (listening only).
	sc := a.start(a.lab.App, socat, "-d", "TCP:"+echo.String(), "SYSTEM:sleep 120")
	nc := a.start(a.lab.App, ncat, "--recv-only", remote4.String(), fmt.Sprint(sourcePort))
	defer sc.stop()
	defer nc.stop()

	// Traffic for the graph, bounded: a small transfer every 250 ms.
	stop := make(chan struct{})
	var traffic sync.WaitGroup
	traffic.Add(1)
	go func() {
		defer traffic.Done()
		for i := 0; i < 400; i++ {
			select {
			case <-stop:
				return
			case <-time.After(250 * time.Millisecond):
			}
			c, err := a.app.DialContext(a.ctx, "tcp", netip.AddrPortFrom(remote4, sourcePort).String())
			if err != nil {
				continue
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprintf(c, "%d\n", 2<<20+i*40<<10)
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	defer func() { close(stop); traffic.Wait() }()

	ctx := chromium.New(t, a.lab.App)
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	socatRow := `#connections tbody tr[data-process="socat"]`
	ncatRow := `#connections tbody tr[data-process="ncat"]`
	err := chromedp.Do(ctx,
		chromedp.Navigate("http://"+apiAddr+"/ui/#secret=a%26b"),
		chromedp.WaitVisible(chromedp.CSS(socatRow)),
		chromedp.WaitVisible(chromedp.CSS(ncatRow)),
		chromedp.WaitVisible(chromedp.CSS(`#rules tbody tr[data-index="1"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#proxies tbody tr[data-name="corp"]`)),
	)
	if err != nil {
		t.Fatalf("the page did not list the flows: %v\nsocat: %s\nncat: %s", err, sc.out.String(), nc.out.String())
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.TextContent(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("%s: %v", sel, err)
		}
		return strings.TrimSpace(s)
	}
	if got := text(socatRow + " td.destination"); got != echo.String() {
		t.Errorf("socat's destination %q, want %s", got, echo)
	}
	if got := text(socatRow + " td.rule"); got != "Match" {
		t.Errorf("socat's rule %q, want Match (MATCH,corp)", got)
	}
	if got := text(socatRow + " td.outbound"); got != "corp" {
		t.Errorf("socat's outbound %q", got)
	}
	if got := text(ncatRow + " td.destination"); got != netip.AddrPortFrom(remote4, sourcePort).String() {
		t.Errorf("ncat's destination %q", got)
	}

	// Let the graph fill, then the picture.
	time.Sleep(6 * time.Second)
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := png.Decode(bytes.NewReader(shot)); err != nil {
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	path := filepath.Join(chromium.ArtifactDir(t), "ui-lab.png")
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
	if p := os.Getenv("TUNSOCKS_UI_SCREENSHOT"); p != "" {
		if err := os.WriteFile(p, shot, 0o644); err != nil {
			t.Error(err)
		}
	}

	// The close button resets socat's connection: socat reads "connection
	// reset by peer"; the row goes.
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(socatRow+" button.close"))); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(strings.ToLower(sc.out.String()), "connection reset by peer") {
		if time.Now().After(deadline) {
			t.Fatalf("socat did not see a reset:\n%s", sc.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := chromedp.Do(ctx, chromedp.WaitNotPresent(chromedp.CSS(socatRow))); err != nil {
		t.Errorf("socat's row stayed: %v", err)
	}
	// ncat's flow is untouched.
	select {
	case <-nc.done:
		t.Errorf("ncat ended too:\n%s", nc.out.String())
	default:
	}
	if n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('#connections tbody tr[data-process="ncat"]').length`)); err != nil || n != 1 {
		t.Errorf("ncat's row: %d, %v", n, err)
	}
}
