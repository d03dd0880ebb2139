package wg

import (
	"bytes"
	"image/png"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func fixedKey(b byte) Key {
	var k Key
	for i := range k {
		k[i] = b
	}
	k.clamp()
	return k
}

func TestClientConfigText(t *testing.T) {
	s := &State{Server: fixedKey(1), Range4: DefaultRange4, Range6: DefaultRange6}
	p := Peer{Name: "pixel", Private: fixedKey(2), Addr4: netip.MustParseAddr("10.7.0.2"), Addr6: netip.MustParseAddr("fd07::2")}
	p.Public = p.Private.Public()
	c := s.ClientConfig(p, "192.168.1.23:51820", 1420)
	want := "[Interface]\n" +
		"PrivateKey = " + p.Private.String() + "\n" +
		"Address = 10.7.0.2/32, fd07::2/128\n" +
		"DNS = 10.7.0.1, fd07::1\n" +
		"MTU = 1420\n" +
		"\n[Peer]\n" +
		"PublicKey = " + s.Server.Public().String() + "\n" +
		"AllowedIPs = 0.0.0.0/0, ::/0\n" +
		"Endpoint = 192.168.1.23:51820\n" +
		"PersistentKeepalive = 25\n"
	if got := c.String(); got != want {
		t.Fatalf("config:\n%s\nwant:\n%s", got, want)
	}
	back, err := ParseClientConfig("# pixel\n" + c.String())
	if err != nil {
		t.Fatal(err)
	}
	if back.String() != want {
		t.Fatalf("round trip:\n%s", back.String())
	}
	if _, err := ParseClientConfig(strings.Replace(want, "MTU", "Mtux", 1)); err == nil || !strings.Contains(err.Error(), "line 5") {
		t.Fatalf("unknown key: %v", err)
	}
	if _, err := ParseClientConfig("[Interface]\nAddress = 10.0.0.2/32\n"); err == nil {
		t.Fatal("config without keys accepted")
	}
}

func TestQRCodes(t *testing.T) {
	s := &State{Server: fixedKey(1), Range4: DefaultRange4, Range6: DefaultRange6}
	p := Peer{Name: "pixel", Private: fixedKey(2), Public: fixedKey(2).Public(), Addr4: netip.MustParseAddr("10.7.0.2"), Addr6: netip.MustParseAddr("fd07::2")}
	c := s.ClientConfig(p, "[2001:db8::1]:51820", 1420)
	txt, err := QRText(c.String())
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(txt, "\n"), "\n")
	// Version 13 or so at medium correction: about 70 modules, two rows
	// per line.
	if len(lines) < 25 || len(lines) > 80 || !strings.ContainsAny(txt, "█▀▄") {
		t.Fatalf("terminal QR of %d lines:\n%s", len(lines), txt)
	}
	dir := filepath.Join(t.TempDir(), "qr")
	conf, pngPath, err := WriteClientFiles(dir, "pixel", c)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(conf); string(b) != c.String() {
		t.Fatalf("%s holds:\n%s", conf, b)
	}
	for _, f := range []string{conf, pngPath} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v (private key inside: want 0600)", f, fi.Mode(), err)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Fatalf("%s holds %d entries, want the .conf and the .png only", dir, len(ents))
	}
	b, _ := os.ReadFile(pngPath)
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if r := img.Bounds(); r.Dx() < 256 || r.Dx() != r.Dy() {
		t.Fatalf("PNG of %v", r)
	}
}
