package hostnet

import (
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
)

// DNS configuration modes (--dns-config).
const (
	DNSAuto     = "auto"     // systemd-resolved when it is on the bus, else none
	DNSResolved = "resolved" // systemd-resolved, or fail
	DNSNone     = "none"     // leave the resolver alone; port-53 capture answers it
)

// Config is Options plus what Install needs to work them out.
type Config struct {
	Options
	// IncludeCgroupPaths are --include-cgroup values: a path relative to
	// the cgroup2 root (as /proc/PID/cgroup shows it) or an absolute path
	// under the cgroup2 mount. Install resolves them into IncludeCgroups.
	IncludeCgroupPaths []string
	// Upstreams are the proxies' addresses. One on a local address is
	// served by a process of this host, whose own connections must go
	// direct: Install excludes its owner or refuses to start.
	Upstreams []netip.AddrPort
	// DNSConfig is DNSAuto, DNSResolved or DNSNone; "" is DNSAuto, except
	// with --include-* or without --auto-route, where it is DNSNone.
	DNSConfig string
	// StateDir holds the state files; "" is DefaultStateDir.
	StateDir string
	// DBusAddress is the bus where systemd-resolved is; "" is the system
	// bus. Tests point it at a private bus.
	DBusAddress string
	// Logger receives what was done; nil discards.
	Logger *slog.Logger
}

func (c *Config) stateDir() string {
	if c.StateDir == "" {
		return DefaultStateDir
	}
	return c.StateDir
}

func (c *Config) dnsConfig() string {
	if c.DNSConfig != "" {
		return c.DNSConfig
	}
	if !c.AutoRoute || len(c.IncludeCgroupPaths) > 0 || len(c.IncludeCgroups) > 0 || len(c.IncludeUIDs) > 0 {
		// Pointing the whole host's resolver at tunsocks would hand fake
		// IPs to apps that are not captured.
		return DNSNone
	}
	return DNSAuto
}

func (c *Config) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Logger
}

// CheckDNSConfig validates a --dns-config value.
func CheckDNSConfig(s string) error {
	switch s {
	case "", DNSAuto, DNSResolved, DNSNone:
		return nil
	}
	return fmt.Errorf("--dns-config %q: want auto, resolved or none", s)
}

// UndoHint is the command that removes a run's objects if it was killed.
func UndoHint(tun string) string {
	return "tunsocks cleanup --tun " + tun
}

// Block renders the startup block: what was installed, how to undo it.
func Block(s *State) string {
	var b strings.Builder
	fmt.Fprintf(&b, "host network changes for %s (state file lists them all):\n", s.Tun)
	for _, l := range s.Describe() {
		b.WriteString("  " + l + "\n")
	}
	fmt.Fprintf(&b, "all of it is removed on exit; if tunsocks is killed, run: %s", UndoHint(s.Tun))
	return b.String()
}

// Cleaned is one dead run's state that Cleanup removed.
type Cleaned struct {
	PID     int
	Tun     string
	Path    string
	Objects []string
}
