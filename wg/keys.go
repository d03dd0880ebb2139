package wg

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"

	"golang.org/x/crypto/curve25519"
)

// KeyLen is the length of a WireGuard key in bytes.
const KeyLen = 32

// Key is a Curve25519 key, private or public. Configs for people (wg-quick
// files, the state file) show it in standard base64; the UAPI that
// configures wireguard-go takes hex.
type Key [KeyLen]byte

// NewPrivateKey returns a random private key, clamped as Curve25519 wants
// (what `wg genkey` prints).
func NewPrivateKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return Key{}, fmt.Errorf("wg: random key: %w", err)
	}
	k.clamp()
	return k, nil
}

func (k *Key) clamp() {
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
}

// Public returns the public key of a private key (`wg pubkey`).
func (k Key) Public() Key {
	var pub Key
	p, err := curve25519.X25519(k[:], curve25519.Basepoint)
	if err != nil {
		// X25519 fails only for a low-order result, which a clamped
		// scalar times the base point never is.
		panic("wg: public key of a private key: " + err.Error())
	}
	copy(pub[:], p)
	return pub
}

// IsZero reports whether k is all zeroes (unset).
func (k Key) IsZero() bool { return k == Key{} }

// String is the base64 form.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// Hex is the form the UAPI takes.
func (k Key) Hex() string { return hex.EncodeToString(k[:]) }

// ParseKey reads a key in base64 (44 characters, as `wg genkey` prints it).
func ParseKey(s string) (Key, error) {
	var k Key
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != KeyLen {
		return Key{}, fmt.Errorf("wg: key %q: want %d bytes in standard base64 (44 characters ending in '='), as `wg genkey` prints", abbrev(s), KeyLen)
	}
	copy(k[:], b)
	return k, nil
}

// parseHexKey reads a key in the UAPI's hex form.
func parseHexKey(s string) (Key, error) {
	var k Key
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != KeyLen {
		return Key{}, fmt.Errorf("wg: hex key %q: want %d bytes", abbrev(s), KeyLen)
	}
	copy(k[:], b)
	return k, nil
}

// MarshalText and UnmarshalText use base64, for the state file.
func (k Key) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

func (k *Key) UnmarshalText(b []byte) error {
	p, err := ParseKey(string(b))
	if err != nil {
		return err
	}
	*k = p
	return nil
}

// abbrev keeps a key's first characters for an error message, so a secret
// pasted in the wrong place is not echoed whole.
func abbrev(s string) string {
	if len(s) > 8 {
		return s[:8] + "..."
	}
	return s
}
