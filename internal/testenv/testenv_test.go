package testenv

import (
	"os"
	"testing"
)

func TestNeedToolFindsSbin(t *testing.T) {
	// ip lives in /usr/sbin or /sbin on Debian, often outside a user's PATH.
	t.Setenv("PATH", "/nonexistent")
	if p := NeedTool(t, "ip", "iproute2"); p == "" {
		t.Fatal("no path")
	} else if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
}

func TestCI(t *testing.T) {
	t.Setenv("CI", "true")
	if !CI() {
		t.Fatal("CI=true not seen")
	}
	t.Setenv("CI", "")
	if CI() {
		t.Fatal("empty CI seen as CI")
	}
}
