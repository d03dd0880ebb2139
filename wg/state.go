package wg

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

// State is what the WireGuard inbound keeps between runs: the server's
// private key, the tunnel address ranges, and the named peers with their
// keys and tunnel addresses. It lives in a JSON file readable only by its
// owner (it holds private keys), by default DefaultStatePath.
type State struct {
	// Server is the server's private key, made on first use.
	Server Key `json:"server"`
	// Range4 and Range6 hold the tunnel addresses: the first host address
	// is the server's (and the DNS address in the peers' configs), the
	// following ones go to peers in order.
	Range4 netip.Prefix `json:"range4"`
	Range6 netip.Prefix `json:"range6"`
	Peers  []Peer       `json:"peers"`

	path string
}

// Peer is one named client.
type Peer struct {
	Name string `json:"name"`
	// Private is the client's private key: tunsocks makes it so it can
	// print the client's whole config (and QR code) again at any time.
	Private Key        `json:"private"`
	Public  Key        `json:"public"`
	Addr4   netip.Addr `json:"v4"`
	Addr6   netip.Addr `json:"v6"`
	Created time.Time  `json:"created"`
}

// Default tunnel ranges.
var (
	DefaultRange4 = netip.MustParsePrefix("10.7.0.0/24")
	DefaultRange6 = netip.MustParsePrefix("fd07::/64")
)

// DefaultStatePath is os.UserConfigDir()/tunsocks/wg.json
// ($XDG_CONFIG_HOME or ~/.config on Linux).
func DefaultStatePath() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("wg: no config directory for the state file (%w); give --state FILE", err)
	}
	return filepath.Join(dir, "tunsocks", "wg.json"), nil
}

// peerName: what a file name and a rule can both carry.
var peerName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$`)

// CheckPeerName says what is wrong with a peer name, if anything.
func CheckPeerName(name string) error {
	if !peerName.MatchString(name) {
		return fmt.Errorf("wg: peer name %q: want 1 to 32 letters, digits, '.', '_' or '-', starting with a letter or digit (it becomes a file name and a rule's IN-USER value)", name)
	}
	return nil
}

// LoadState reads the state file at path. A missing file is an error
// wrapping fs.ErrNotExist; OpenState creates one instead.
func LoadState(path string) (*State, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("wg: state file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("wg: state file %s has mode %#o: it holds private keys, so only its owner may read it; run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("wg: state file: %w", err)
	}
	var s State
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("wg: state file %s: %w", path, err)
	}
	s.path = path
	if err := s.check(); err != nil {
		return nil, fmt.Errorf("wg: state file %s: %w", path, err)
	}
	return &s, nil
}

// OpenState loads the state file at path, or creates it (with a new server
// key and the default ranges) when it does not exist yet; created says
// which. The file is written only by Save.
func OpenState(path string) (s *State, created bool, err error) {
	s, err = LoadState(path)
	if err == nil {
		return s, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, err
	}
	key, err := NewPrivateKey()
	if err != nil {
		return nil, false, err
	}
	return &State{Server: key, Range4: DefaultRange4, Range6: DefaultRange6, path: path}, true, nil
}

// Path is the file the state came from or goes to.
func (s *State) Path() string { return s.path }

func (s *State) check() error {
	if s.Server.IsZero() {
		return errors.New("no server key")
	}
	if err := checkRanges(s.Range4, s.Range6); err != nil {
		return err
	}
	seen := map[string]bool{}
	addrs := map[netip.Addr]string{}
	for _, p := range s.Peers {
		if err := CheckPeerName(p.Name); err != nil {
			return err
		}
		if seen[strings.ToLower(p.Name)] {
			return fmt.Errorf("peer %q appears twice", p.Name)
		}
		seen[strings.ToLower(p.Name)] = true
		if p.Private.IsZero() || p.Private.Public() != p.Public {
			return fmt.Errorf("peer %q: its public key does not belong to its private key", p.Name)
		}
		for _, a := range []netip.Addr{p.Addr4, p.Addr6} {
			if other, dup := addrs[a]; dup {
				return fmt.Errorf("peers %q and %q share the address %s", other, p.Name, a)
			}
			addrs[a] = p.Name
		}
		if !p.Addr4.Is4() || !p.Addr6.Is6() || p.Addr6.Is4In6() {
			return fmt.Errorf("peer %q: want an IPv4 and an IPv6 address", p.Name)
		}
	}
	return nil
}

func checkRanges(r4, r6 netip.Prefix) error {
	if !r4.IsValid() || !r4.Addr().Is4() || r4.Bits() > 30 {
		return fmt.Errorf("IPv4 tunnel range %s: want an IPv4 prefix of /30 or wider, like %s", r4, DefaultRange4)
	}
	if !r6.IsValid() || !r6.Addr().Is6() || r6.Addr().Is4In6() || r6.Bits() > 126 {
		return fmt.Errorf("IPv6 tunnel range %s: want an IPv6 prefix of /126 or wider, like %s", r6, DefaultRange6)
	}
	return nil
}

// ServerAddrs are the server's tunnel addresses: the first host of each
// range. The peers' configs name them as their DNS servers.
func (s *State) ServerAddrs() (v4, v6 netip.Addr) {
	return s.Range4.Masked().Addr().Next(), s.Range6.Masked().Addr().Next()
}

// Peer returns the peer called name (case-insensitive).
func (s *State) Peer(name string) (Peer, bool) {
	i := s.index(name)
	if i < 0 {
		return Peer{}, false
	}
	return s.Peers[i], true
}

func (s *State) index(name string) int {
	return slices.IndexFunc(s.Peers, func(p Peer) bool { return strings.EqualFold(p.Name, name) })
}

// AddPeer adds a peer with new keys and the next free addresses, unless
// one of that name exists; added says which. Save writes it.
func (s *State) AddPeer(name string) (p Peer, added bool, err error) {
	if err := CheckPeerName(name); err != nil {
		return Peer{}, false, err
	}
	if i := s.index(name); i >= 0 {
		return s.Peers[i], false, nil
	}
	priv, err := NewPrivateKey()
	if err != nil {
		return Peer{}, false, err
	}
	a4, err := s.freeAddr(s.Range4, "")
	if err != nil {
		return Peer{}, false, err
	}
	a6, err := s.freeAddr(s.Range6, "")
	if err != nil {
		return Peer{}, false, err
	}
	p = Peer{Name: name, Private: priv, Public: priv.Public(), Addr4: a4, Addr6: a6, Created: time.Now().UTC().Truncate(time.Second)}
	s.Peers = append(s.Peers, p)
	return p, true, nil
}

// RemovePeer removes the peer called name. Save writes it.
func (s *State) RemovePeer(name string) error {
	i := s.index(name)
	if i < 0 {
		return fmt.Errorf("wg: no peer %q in %s; the peers are: %s", name, s.path, s.peerNames())
	}
	s.Peers = slices.Delete(s.Peers, i, i+1)
	return nil
}

func (s *State) peerNames() string {
	if len(s.Peers) == 0 {
		return "(none)"
	}
	names := make([]string, len(s.Peers))
	for i, p := range s.Peers {
		names[i] = p.Name
	}
	return strings.Join(names, ", ")
}

// SetRanges changes the tunnel ranges. Peers whose addresses fall outside
// the new ranges get new ones (their old configs stop working); their
// names are returned. Save writes it.
func (s *State) SetRanges(r4, r6 netip.Prefix) (readdressed []string, err error) {
	if err := checkRanges(r4, r6); err != nil {
		return nil, fmt.Errorf("wg: %w", err)
	}
	s.Range4, s.Range6 = r4.Masked(), r6.Masked()
	for i := range s.Peers {
		p := &s.Peers[i]
		moved := false
		if !s.usable(s.Range4, p.Addr4) {
			if p.Addr4, err = s.freeAddr(s.Range4, p.Name); err != nil {
				return readdressed, err
			}
			moved = true
		}
		if !s.usable(s.Range6, p.Addr6) {
			if p.Addr6, err = s.freeAddr(s.Range6, p.Name); err != nil {
				return readdressed, err
			}
			moved = true
		}
		if moved {
			readdressed = append(readdressed, p.Name)
		}
	}
	return readdressed, nil
}

// usable: a peer address in r that is neither the network, the server nor
// (IPv4) the broadcast address.
func (s *State) usable(r netip.Prefix, a netip.Addr) bool {
	if !r.Contains(a) {
		return false
	}
	first := r.Masked().Addr()
	if a == first || a == first.Next() {
		return false
	}
	return !(a.Is4() && a == lastAddr(r))
}

// freeAddr is the lowest usable address of r that no peer other than
// except holds.
func (s *State) freeAddr(r netip.Prefix, except string) (netip.Addr, error) {
	used := map[netip.Addr]bool{}
	for _, p := range s.Peers {
		if p.Name != except {
			used[p.Addr4], used[p.Addr6] = true, true
		}
	}
	const maxScan = 1 << 16 // a /64 is never full; bound the walk
	a := r.Masked().Addr().Next().Next()
	for i := 0; i < maxScan && r.Contains(a); i, a = i+1, a.Next() {
		if s.usable(r, a) && !used[a] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("wg: tunnel range %s has no free address for another peer; remove one (tunsocks wg remove-peer NAME) or choose a wider range", r)
}

func lastAddr(r netip.Prefix) netip.Addr {
	b := r.Masked().Addr().AsSlice()
	for i := r.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// Save writes the state to its file atomically, readable by its owner
// only; it creates the directory (mode 0700) if needed.
func (s *State) Save() error {
	if s.path == "" {
		return errors.New("wg: state has no file")
	}
	if err := s.check(); err != nil {
		return fmt.Errorf("wg: state: %w", err)
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	dir := filepath.Dir(s.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("wg: state directory: %w", err)
	}
	f, err := os.CreateTemp(dir, ".wg-*.json")
	if err != nil {
		return fmt.Errorf("wg: state file: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename there is nothing to remove
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("wg: state file: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("wg: state file: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("wg: state file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("wg: state file: %w", err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return fmt.Errorf("wg: state file: %w", err)
	}
	return nil
}
