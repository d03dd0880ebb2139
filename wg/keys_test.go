package wg

import (
	"encoding/hex"
	"strings"
	"testing"
)

func TestPublicKeyRFC7748(t *testing.T) {
	// RFC 7748 section 6.1: Alice's key pair.
	priv, _ := hex.DecodeString("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
	var k Key
	copy(k[:], priv)
	if got, want := k.Public().Hex(), "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"; got != want {
		t.Fatalf("public key %s, want %s", got, want)
	}
}

func TestNewPrivateKeyClampedAndRoundTrips(t *testing.T) {
	seen := map[Key]bool{}
	for range 16 {
		k, err := NewPrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		if k[0]&7 != 0 || k[31]&128 != 0 || k[31]&64 == 0 {
			t.Fatalf("key %x is not clamped", k)
		}
		if seen[k] {
			t.Fatal("the same key twice")
		}
		seen[k] = true
		s := k.String()
		if len(s) != 44 || !strings.HasSuffix(s, "=") {
			t.Fatalf("base64 form %q", s)
		}
		back, err := ParseKey(s)
		if err != nil || back != k {
			t.Fatalf("ParseKey(%q) = %x, %v", s, back, err)
		}
		hk, err := parseHexKey(k.Hex())
		if err != nil || hk != k {
			t.Fatalf("parseHexKey: %x, %v", hk, err)
		}
	}
}

func TestParseKeyErrorsHideTheKey(t *testing.T) {
	secret := "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2Vj" // 45 characters
	_, err := ParseKey(secret)
	if err == nil {
		t.Fatal("a 45-character key parsed")
	}
	if strings.Contains(err.Error(), secret) || !strings.Contains(err.Error(), "base64") {
		t.Fatalf("error %q should name the format and not repeat the key", err)
	}
	if _, err := ParseKey("not base64!"); err == nil {
		t.Fatal("garbage parsed")
	}
}
