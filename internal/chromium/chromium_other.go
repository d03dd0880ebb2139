//go:build !linux

package chromium

import "os/exec"

// dieWithParent has no portable form; the test's cleanup ends the browser.
func dieWithParent(*exec.Cmd) {}
