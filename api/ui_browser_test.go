package api

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tunsocks/tunsocks/internal/chromium"
)

// TestUIInBrowser opens /ui/ in headless chromium against fake flows: the
// page asks for the secret (one with an &, so the WebSocket token must be
// escaped), lists the flows with their process and rule, filters them,
// closes one with its button, shows the rules with hit counts, the
// outbounds and the log; and leaves a screenshot.
func TestUIInBrowser(t *testing.T) {
	f := newFixture(t, "a&b")
	base := f.serve(t)
	ctx := chromium.New(t, "")
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()

	row := `#connections tbody tr[data-id="5f0c6a9e-3b1d-4c2a-9e7f-0a1b2c3d4e5f"]`
	err := chromedp.Do(ctx,
		chromedp.Navigate(base+"/ui/"),
		chromedp.WaitVisible(chromedp.CSS("#login")),
		chromedp.SendKeys(chromedp.CSS("#secret"), "a&b"),
		chromedp.Click(chromedp.CSS(`#login button`)),
		chromedp.WaitVisible(chromedp.CSS(row)),
		chromedp.WaitVisible(chromedp.CSS(`#rules tbody tr[data-index="1"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#proxies tbody tr[data-name="corp"]`)),
	)
	if err != nil {
		t.Fatal(err)
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.TextContent(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("%s: %v", sel, err)
		}
		return strings.TrimSpace(s)
	}
	count := func() int {
		t.Helper()
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#connections tbody tr").length`))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n, proc, rule, hits := count(), text(row+" td.process"), text(row+" td.rule"), text(`#rules tbody tr[data-index="1"] td.hits`); n != 3 || proc != "curl" || rule != "DomainSuffix(example.com)" || hits != "40" {
		t.Errorf("rows %d, process %q, rule %q, rule hits %q; want 3, curl, DomainSuffix(example.com), 40", n, proc, rule, hits)
	}
	if outbounds := text("#proxies tbody"); !strings.Contains(outbounds, "10.0.0.1:1080") || !strings.Contains(outbounds, "corp → far") {
		t.Errorf("outbounds table: %q", outbounds)
	}

	// The filter box narrows the list.
	if err := chromedp.Do(ctx, chromedp.SendKeys(chromedp.CSS("#filter"), "git.example")); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 1 {
		t.Errorf("filtered to %d rows, want 1", n)
	}
	clear := `(() => { const f = document.querySelector("#filter"); f.value = ""; f.dispatchEvent(new Event("input")); })()`
	if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](clear)); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 3 {
		t.Errorf("%d rows after clearing the filter, want 3", n)
	}

	// A log record reaches the page.
	slog.New(f.hub).Warn("upstream slow", "outbound", "corp")
	if err := chromedp.Do(ctx, chromedp.WaitVisible(`//ol[@id="log"]/li[contains(., "upstream slow outbound=corp")]`)); err != nil {
		t.Fatalf("the log record did not appear: %v", err)
	}

	// The screenshot, with all three flows listed.
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // quality 100: PNG
	if err != nil {
		t.Fatal(err)
	}
	if _, err := png.Decode(bytes.NewReader(shot)); err != nil {
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	path := filepath.Join(chromium.ArtifactDir(t), "ui-fakes.png")
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)

	// The close button of one flow closes that flow, and it leaves the list.
	id := "0b8e2d4c-6f1a-4e3b-8c5d-7e9f0a1b2c3d"
	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(fmt.Sprintf(`tr[data-id=%q] button.close`, id))),
		chromedp.WaitNotPresent(chromedp.CSS(fmt.Sprintf(`tr[data-id=%q]`, id))),
	)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.flows.closedIDs(); !slices.Equal(got, []string{id}) {
		t.Errorf("closed %q, want only %s", got, id)
	}
}
