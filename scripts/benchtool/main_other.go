//go:build !linux

// Command benchtool is the Linux network-namespace benchmark of tunsocks.
package main

import (
	"fmt"
	"os"
	"runtime"
)

func main() {
	fmt.Fprintf(os.Stderr, "benchtool: not supported on %s: it needs Linux network namespaces\n", runtime.GOOS)
	os.Exit(1)
}
