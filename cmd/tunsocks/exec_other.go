//go:build !linux

package main

import (
	"fmt"
	"runtime"

	"github.com/urfave/cli/v2"
)

func execAction(c *cli.Context) error {
	return fmt.Errorf("exec runs commands in Linux namespaces; not available on %s", runtime.GOOS)
}
