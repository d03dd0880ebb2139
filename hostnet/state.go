package hostnet

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// State is what a run installed, written to the state file before any of
// it is installed. Removing everything it names gives the host back.
type State struct {
	Version int `json:"version"`
	// PID and StartTime identify the owner: a live process with this pid
	// and start time (clock ticks since boot) owns the state.
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
	// Netns is the network namespace (its /proc/self/ns/net link), so a
	// state is only ever applied where it was made.
	Netns string `json:"netns"`
	Tun   string `json:"tun"`

	Rules    []Rule     `json:"rules,omitempty"`
	Routes   []Route    `json:"routes,omitempty"`
	NftTable string     `json:"nft_table,omitempty"` // family inet
	Forward  []ChainRef `json:"forward_accept,omitempty"`
	FwdTag   string     `json:"forward_tag,omitempty"`
	Sysctls  []Sysctl   `json:"sysctls,omitempty"`
	// ResolvedIfindex is the link whose resolved settings were changed;
	// 0 when none. The settings die with the link.
	ResolvedIfindex int    `json:"resolved_ifindex,omitempty"`
	ResolvedBus     string `json:"resolved_bus,omitempty"` // "" is the system bus
}

const stateVersion = 1

// statePath is the state file of tun in netns within dir: dir/TUN.json in
// the namespace of pid 1, dir/TUN@NETNS.json in any other, so runs in
// different namespaces (tests, containers sharing /run) never meet.
func statePath(dir, tun, netns, initNetns string) string {
	name := tun
	if netns != initNetns {
		name += "@" + strings.Trim(strings.TrimPrefix(netns, "net:"), "[]")
	}
	return filepath.Join(dir, name+".json")
}

// writeState writes s to path atomically and durably.
func writeState(path string, s *State) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("state file: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("state file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	return nil
}

// readState reads a state file; a missing file is (nil, nil).
func readState(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state file: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("state file %s: %w", path, err)
	}
	if s.Version != stateVersion {
		return nil, fmt.Errorf("state file %s: version %d, this tunsocks reads %d", path, s.Version, stateVersion)
	}
	return &s, nil
}

// Describe lists what s holds, one object per line, for the startup block
// and `tunsocks cleanup`.
func (s *State) Describe() []string {
	var out []string
	for _, r := range s.Rules {
		out = append(out, "rule "+r.String())
	}
	for _, r := range s.Routes {
		fam := ""
		if r.Family == 6 {
			fam = " [v6]"
		}
		out = append(out, fmt.Sprintf("route%s default dev %s table %d", fam, r.Dev, r.Table))
	}
	if s.NftTable != "" {
		out = append(out, "nftables table inet "+s.NftTable)
	}
	for _, c := range s.Forward {
		out = append(out, fmt.Sprintf("nftables accept rules in %s (comment %q)", c, s.FwdTag))
	}
	for _, c := range s.Sysctls {
		out = append(out, fmt.Sprintf("sysctl %s = %s (was %s)", strings.ReplaceAll(c.Path, "/", "."), c.New, c.Old))
	}
	if s.ResolvedIfindex != 0 {
		out = append(out, fmt.Sprintf("systemd-resolved DNS of link %d", s.ResolvedIfindex))
	}
	return out
}
