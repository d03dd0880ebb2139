package main

import (
	"net/netip"

	"github.com/urfave/cli/v2"
)

// hostLoopback is the address inside an exec sandbox that reaches the
// host's 127.0.0.1 with --allow-host-loopback (podman and pasta use it for
// the same job).
var hostLoopback = netip.AddrFrom4([4]byte{169, 254, 1, 2})

func execCommand() *cli.Command {
	// run's flags, less those that route the host: exec routes nothing
	// but its sandbox.
	route := map[string]bool{}
	for _, f := range routeFlags() {
		route[f.Names()[0]] = true
	}
	var flags []cli.Flag
	for _, f := range runFlags() {
		if !route[f.Names()[0]] {
			flags = append(flags, f)
		}
	}
	flags = append(flags,
		&cli.StringFlag{Name: "user", Usage: "as root: run the command as this user (name or uid) instead of the invoking one (SUDO_UID under sudo, else root without capabilities)"},
		&cli.StringFlag{Name: "name", Usage: "publish this exec as NAME, so that 'tunsocks exec --join NAME -- CMD' runs more commands in it"},
		&cli.StringFlag{Name: "join", Usage: "run the command inside the running exec published as NAME, through its tunsocks (no other flag applies)"},
		&cli.BoolFlag{Name: "allow-host-loopback", Usage: "let the command reach the host's 127.0.0.1 at " + hostLoopback.String() + " (inside, 127.0.0.1 is the sandbox's own)"},
	)
	return &cli.Command{
		Name:      "exec",
		Usage:     "run one command, and everything it starts, with all its traffic through tunsocks",
		ArgsUsage: "-- CMD [ARGS...]",
		Description: "Runs CMD in new network, mount and PID namespaces whose only interfaces are lo and a TUN that this\n" +
			"tunsocks serves from outside: TCP, UDP and DNS of CMD and its children go through the rules and\n" +
			"upstreams of 'run' (same flags and config), static and Go binaries included; nothing can leave\n" +
			"another way. Inside, /etc/resolv.conf points at the fake-IP DNS, and the host resolver's sockets\n" +
			"(systemd-resolved, nscd) are hidden. CMD runs as you, without capabilities; tunsocks exits with\n" +
			"CMD's exit status once CMD and everything it started are gone. If tunsocks dies, the TUN goes with it\n" +
			"and CMD is left without network.\n\n" +
			"Without root it uses an unprivileged user namespace: the kernel must allow those (not blocked by\n" +
			"AppArmor) and /dev/net/tun must be open to you; tunsocks names the fix when one is missing.\n\n" +
			"Example:\n  tunsocks exec --proxy socks5://127.0.0.1:1080 -- curl https://example.com/",
		Flags:  flags,
		Action: execAction,
	}
}
