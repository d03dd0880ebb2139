// Package chromium starts Debian's chromium, headless, for the tests that
// drive a real browser through the DevTools protocol
// (github.com/chromedp/chromedp): the /ui/ page's tests.
package chromium

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/tunsocks/tunsocks/internal/testenv"
)

// New starts a fresh chromium (its own empty profile, removed after the
// test) and returns a browser context for chromedp.Run; the browser ends
// with the test. netns, when not "", runs it inside that network namespace
// (`ip netns exec`), where the page under test is served. The test is
// unavailable (skipped, or failed under CI) without chromium.
func New(t testing.TB, netns string) context.Context {
	t.Helper()
	path := testenv.NeedTool(t, "chromium", "chromium")
	var ip string
	if netns != "" {
		ip = testenv.NeedTool(t, "ip", "iproute2")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Headless,
		chromedp.NoSandbox, // as root, chromium refuses to start sandboxed
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("no-pings", true),
		// No name lookups at all: the tests load pages by IP address, and
		// the browser's own background lookups would be flows in the
		// network under test.
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"),
		chromedp.WindowSize(1400, 1000),
		chromedp.ModifyCmdFunc(func(cmd *exec.Cmd) {
			dieWithParent(cmd)
			if netns != "" {
				cmd.Args = append([]string{ip, "netns", "exec", netns}, cmd.Args...)
				cmd.Path = ip
			}
		}),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	// Start it now, so a browser that cannot start fails here.
	if err := chromedp.Do(ctx); err != nil {
		testenv.Unavailable(t, "chromium does not start: "+err.Error())
	}
	return ctx
}

// ArtifactDir is where tests write what a person may want to look at
// afterwards (screenshots): $TUNSOCKS_ARTIFACTS, else tunsocks-artifacts
// in the temporary directory. It is created if needed and not removed.
func ArtifactDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("TUNSOCKS_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "tunsocks-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
