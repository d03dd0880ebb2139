package wg

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	qrcode "github.com/skip2/go-qrcode"
)

// ClientConfig is a peer's side of the tunnel, in the wg-quick format that
// the official WireGuard apps import from a file or a QR code.
type ClientConfig struct {
	// Name labels the config (a comment line; the apps ignore it).
	Name       string
	PrivateKey Key
	Addresses  []netip.Prefix // the peer's tunnel addresses, /32 and /128
	DNS        []netip.Addr   // tunsocks' DNS inside the tunnel
	MTU        int            // 0: leave it to the app
	// ServerKey is the server's public key.
	ServerKey  Key
	AllowedIPs []netip.Prefix // what the phone sends into the tunnel
	Endpoint   string         // host:port the phone reaches the server at
	Keepalive  int            // PersistentKeepalive in seconds; 0: none
}

// DefaultKeepalive keeps the phone's NAT mapping (and the server's view of
// its endpoint) alive.
const DefaultKeepalive = 25

// ClientConfig is peer p's config for reaching the server at endpoint
// (host:port), with everything routed into the tunnel.
func (s *State) ClientConfig(p Peer, endpoint string, mtu int) ClientConfig {
	d4, d6 := s.ServerAddrs()
	return ClientConfig{
		Name:       p.Name,
		PrivateKey: p.Private,
		Addresses:  []netip.Prefix{netip.PrefixFrom(p.Addr4, 32), netip.PrefixFrom(p.Addr6, 128)},
		DNS:        []netip.Addr{d4, d6},
		MTU:        mtu,
		ServerKey:  s.Server.Public(),
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")},
		Endpoint:   endpoint,
		Keepalive:  DefaultKeepalive,
	}
}

func joinList[T fmt.Stringer](xs []T) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = x.String()
	}
	return strings.Join(s, ", ")
}

// String is the wg-quick text; it is also exactly the QR code's payload.
func (c ClientConfig) String() string {
	var b strings.Builder
	b.WriteString("[Interface]\n")
	fmt.Fprintf(&b, "PrivateKey = %s\n", c.PrivateKey)
	fmt.Fprintf(&b, "Address = %s\n", joinList(c.Addresses))
	if len(c.DNS) > 0 {
		fmt.Fprintf(&b, "DNS = %s\n", joinList(c.DNS))
	}
	if c.MTU > 0 {
		fmt.Fprintf(&b, "MTU = %d\n", c.MTU)
	}
	b.WriteString("\n[Peer]\n")
	fmt.Fprintf(&b, "PublicKey = %s\n", c.ServerKey)
	fmt.Fprintf(&b, "AllowedIPs = %s\n", joinList(c.AllowedIPs))
	fmt.Fprintf(&b, "Endpoint = %s\n", c.Endpoint)
	if c.Keepalive > 0 {
		fmt.Fprintf(&b, "PersistentKeepalive = %d\n", c.Keepalive)
	}
	return b.String()
}

// ParseClientConfig reads the wg-quick text String writes (one peer;
// comments and blank lines ignored). Unknown keys are errors.
func ParseClientConfig(text string) (ClientConfig, error) {
	var c ClientConfig
	section := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, "[") {
			section = strings.ToLower(strings.Trim(line, "[]"))
			if section != "interface" && section != "peer" {
				return c, fmt.Errorf("wg config line %d: section %q: want [Interface] or [Peer]", n, line)
			}
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			return c, fmt.Errorf("wg config line %d: %q: want Key = Value inside [Interface] or [Peer]", n, line)
		}
		key, val = strings.ToLower(strings.TrimSpace(key)), strings.TrimSpace(val)
		var err error
		switch section + "." + key {
		case "interface.privatekey":
			c.PrivateKey, err = ParseKey(val)
		case "interface.address":
			c.Addresses, err = parseList(val, netip.ParsePrefix)
		case "interface.dns":
			c.DNS, err = parseList(val, netip.ParseAddr)
		case "interface.mtu":
			c.MTU, err = strconv.Atoi(val)
		case "peer.publickey":
			c.ServerKey, err = ParseKey(val)
		case "peer.allowedips":
			c.AllowedIPs, err = parseList(val, netip.ParsePrefix)
		case "peer.endpoint":
			c.Endpoint = val
		case "peer.persistentkeepalive":
			c.Keepalive, err = strconv.Atoi(val)
		default:
			err = fmt.Errorf("unknown key %q in [%s]", key, section)
		}
		if err != nil {
			return c, fmt.Errorf("wg config line %d: %w", n, err)
		}
	}
	if c.PrivateKey.IsZero() || c.ServerKey.IsZero() || c.Endpoint == "" || len(c.Addresses) == 0 {
		return c, fmt.Errorf("wg config: want PrivateKey and Address in [Interface], PublicKey and Endpoint in [Peer]")
	}
	return c, nil
}

func parseList[T any](s string, parse func(string) (T, error)) ([]T, error) {
	var out []T
	for f := range strings.SplitSeq(s, ",") {
		v, err := parse(strings.TrimSpace(f))
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// qrLevel: medium error correction keeps a config (about 350 bytes) at a
// size a phone camera reads from a terminal.
const qrLevel = qrcode.Medium

// QRText renders text as a QR code for a terminal, two modules per
// character cell (half blocks), dark modules on a light background.
func QRText(text string) (string, error) {
	q, err := qrcode.New(text, qrLevel)
	if err != nil {
		return "", fmt.Errorf("wg: QR code: %w", err)
	}
	return q.ToSmallString(false), nil
}

// QRPNG renders text as a PNG image of a QR code, size pixels square.
func QRPNG(text string, size int) ([]byte, error) {
	q, err := qrcode.New(text, qrLevel)
	if err != nil {
		return nil, fmt.Errorf("wg: QR code: %w", err)
	}
	return q.PNG(size)
}

// WriteClientFiles writes dir/base.conf (the text, mode 0600: it holds the
// peer's private key) and then dir/base.png (its QR code, also 0600), each
// whole or not at all (written aside, then renamed), and returns both
// paths. dir is created (0700) if missing.
func WriteClientFiles(dir, base string, c ClientConfig) (conf, png string, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", fmt.Errorf("wg: %w", err)
	}
	text := c.String()
	img, err := QRPNG(text, 512)
	if err != nil {
		return "", "", err
	}
	conf, png = filepath.Join(dir, base+".conf"), filepath.Join(dir, base+".png")
	if err := writeFile0600(conf, []byte(text)); err != nil {
		return "", "", err
	}
	if err := writeFile0600(png, img); err != nil {
		return "", "", err
	}
	return conf, png, nil
}

// writeFile0600 writes path atomically, readable by its owner only.
func writeFile0600(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("wg: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename there is nothing to remove
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("wg: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("wg: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("wg: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("wg: %w", err)
	}
	return nil
}
