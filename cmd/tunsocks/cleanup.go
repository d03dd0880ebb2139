package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/tunsocks/tunsocks/hostnet"
)

// stateDirFlag is where runs record what they installed on the host.
func stateDirFlag() cli.Flag {
	return &cli.StringFlag{Name: "state-dir", Value: hostnet.DefaultStateDir, Hidden: true,
		Usage: "where runs record what they installed on the host", EnvVars: []string{"TUNSOCKS_STATE_DIR"}}
}

func cleanupCommand() *cli.Command {
	return &cli.Command{
		Name:  "cleanup",
		Usage: "remove the routing a killed 'tunsocks run' left behind (the way out of a tripped kill switch)",
		Description: "A run with --auto-route or --gateway records every rule, route, nftables object and sysctl\n" +
			"it installs in " + hostnet.DefaultStateDir + "/ before installing it, and removes all of it on exit.\n" +
			"If it was killed (SIGKILL, OOM, a crash) the next run removes the leftovers first; this\n" +
			"command does it now. A run that is still alive is left alone: stop it instead.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "tun", Usage: "only the leftovers of the run that served this TUN device", EnvVars: []string{"TUNSOCKS_TUN"}},
			stateDirFlag(),
		},
		Action: func(c *cli.Context) error {
			log, err := newLogger(c)
			if err != nil {
				return err
			}
			done, err := hostnet.Cleanup(c.String("state-dir"), c.String("tun"), log)
			w := c.App.Writer
			for _, d := range done {
				fmt.Fprintf(w, "removed leftovers of crashed run, pid %d (TUN %s):\n", d.PID, d.Tun)
				for _, o := range d.Objects {
					fmt.Fprintf(w, "  %s\n", o)
				}
			}
			if err != nil {
				return err
			}
			if len(done) == 0 {
				fmt.Fprintln(w, "nothing to clean up: no leftovers of a tunsocks run in this network namespace")
			}
			return nil
		},
	}
}
