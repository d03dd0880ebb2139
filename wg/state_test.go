package wg

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStateCreateAddSaveReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "wg.json")
	if _, err := LoadState(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("LoadState of a missing file: %v", err)
	}
	s, created, err := OpenState(path)
	if err != nil || !created {
		t.Fatalf("OpenState: created=%v %v", created, err)
	}
	if s.Server.IsZero() || s.Range4 != DefaultRange4 || s.Range6 != DefaultRange6 {
		t.Fatalf("new state: %+v", s)
	}
	pixel, added, err := s.AddPeer("pixel")
	if err != nil || !added {
		t.Fatal(added, err)
	}
	ipad, _, _ := s.AddPeer("ipad")
	if pixel.Addr4 != netip.MustParseAddr("10.7.0.2") || pixel.Addr6 != netip.MustParseAddr("fd07::2") ||
		ipad.Addr4 != netip.MustParseAddr("10.7.0.3") || ipad.Addr6 != netip.MustParseAddr("fd07::3") {
		t.Fatalf("addresses: pixel %s %s, ipad %s %s", pixel.Addr4, pixel.Addr6, ipad.Addr4, ipad.Addr6)
	}
	if pixel.Public != pixel.Private.Public() || pixel.Private == ipad.Private {
		t.Fatal("peer keys")
	}
	again, added, err := s.AddPeer("PIXEL")
	if err != nil || added || again.Public != pixel.Public {
		t.Fatalf("adding an existing name (any case) must return it: added=%v %v", added, err)
	}
	if err := s.Save(); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{path: 0o600, filepath.Dir(path): 0o700} {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != want {
			t.Fatalf("%s: mode %v (want %#o), %v", p, fi.Mode().Perm(), want, err)
		}
	}
	back, created, err := OpenState(path)
	if err != nil || created {
		t.Fatalf("reopen: created=%v %v", created, err)
	}
	if back.Server != s.Server || len(back.Peers) != 2 || back.Peers[0] != s.Peers[0] || back.Peers[1] != s.Peers[1] {
		t.Fatalf("reloaded state differs:\n%+v\n%+v", back, s)
	}
	if v4, v6 := back.ServerAddrs(); v4 != netip.MustParseAddr("10.7.0.1") || v6 != netip.MustParseAddr("fd07::1") {
		t.Fatalf("server addresses %s %s", v4, v6)
	}
	// No temporary files left next to it.
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Fatalf("directory holds %d entries", len(ents))
	}
}

func TestStateRemoveThenReuseLowestAddress(t *testing.T) {
	s, _, _ := OpenState(filepath.Join(t.TempDir(), "wg.json"))
	for _, n := range []string{"a", "b", "c"} {
		s.AddPeer(n)
	}
	if err := s.RemovePeer("B"); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Peer("b"); ok {
		t.Fatal("b still there")
	}
	err := s.RemovePeer("nope")
	if err == nil || !strings.Contains(err.Error(), "a, c") {
		t.Fatalf("removing an unknown peer: %v (should list the peers)", err)
	}
	d, _, _ := s.AddPeer("d")
	if d.Addr4 != netip.MustParseAddr("10.7.0.3") {
		t.Fatalf("d got %s, want b's freed 10.7.0.3", d.Addr4)
	}
}

func TestStateRangeFullAndReaddress(t *testing.T) {
	s, _, _ := OpenState(filepath.Join(t.TempDir(), "wg.json"))
	if _, err := s.SetRanges(netip.MustParsePrefix("10.9.0.0/30"), netip.MustParsePrefix("fd09::/126")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.AddPeer("one"); err != nil {
		t.Fatal(err)
	}
	// A /30 has network, server, one peer, broadcast.
	if _, _, err := s.AddPeer("two"); err == nil || !strings.Contains(err.Error(), "no free address") {
		t.Fatalf("second peer in a /30: %v", err)
	}
	moved, err := s.SetRanges(netip.MustParsePrefix("10.20.0.0/24"), netip.MustParsePrefix("fd09::/126"))
	if err != nil || len(moved) != 1 || moved[0] != "one" {
		t.Fatalf("readdressed %v, %v", moved, err)
	}
	if p, _ := s.Peer("one"); p.Addr4 != netip.MustParseAddr("10.20.0.2") || p.Addr6 != netip.MustParseAddr("fd09::2") {
		t.Fatalf("one now at %s %s", p.Addr4, p.Addr6)
	}
	if _, err := s.SetRanges(netip.MustParsePrefix("10.0.0.0/31"), DefaultRange6); err == nil {
		t.Fatal("a /31 accepted")
	}
	if _, err := s.SetRanges(DefaultRange4, netip.MustParsePrefix("10.1.0.0/24")); err == nil {
		t.Fatal("an IPv4 range as the IPv6 range accepted")
	}
}

func TestStatePeerNames(t *testing.T) {
	s, _, _ := OpenState(filepath.Join(t.TempDir(), "wg.json"))
	for _, bad := range []string{"", "../x", "a b", "-x", strings.Repeat("x", 33), "ä"} {
		if _, _, err := s.AddPeer(bad); err == nil {
			t.Errorf("peer name %q accepted", bad)
		}
	}
	for _, good := range []string{"pixel", "Pixel-7.a_b", "1"} {
		if _, _, err := s.AddPeer(good); err != nil {
			t.Errorf("peer name %q: %v", good, err)
		}
	}
}

func TestStateFileChecks(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "wg.json")
	s, _, _ := OpenState(path)
	s.AddPeer("pixel")
	if err := s.Save(); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o644)
	if _, err := LoadState(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a world-readable state file: %v", err)
	}
	os.Chmod(path, 0o600)
	b, _ := os.ReadFile(path)
	// A tampered public key no longer matches its private key.
	p := s.Peers[0]
	other, _ := NewPrivateKey()
	os.WriteFile(path, []byte(strings.Replace(string(b), p.Public.String(), other.Public().String(), 1)), 0o600)
	if _, err := LoadState(path); err == nil || !strings.Contains(err.Error(), "does not belong") {
		t.Fatalf("mismatched key pair: %v", err)
	}
	os.WriteFile(path, []byte(strings.Replace(string(b), `"peers"`, `"peer"`, 1)), 0o600)
	if _, err := LoadState(path); err == nil || !strings.Contains(err.Error(), "unknown field") {
		t.Fatalf("unknown key: %v", err)
	}
}
