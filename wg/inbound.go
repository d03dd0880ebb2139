// Package wg is tunsocks' WireGuard inbound: phones and other devices join
// with their stock WireGuard app (a QR code carries their config), and
// their traffic enters tunsocks' netstack, rules, DNS and pcap as a TUN's
// does. wireguard-go's device runs in userspace over an in-memory packet
// pipe (no kernel interface, so no privilege) and a UDP socket from
// tunsocks' own dialer.
//
// The package also keeps the keys and named peers (State), renders each
// peer's wg-quick config and QR code (ClientConfig), picks the address a
// phone should reach (Endpoints) and spots a host firewall that would drop
// it (CheckFirewall).
package wg

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/device"
)

// DefaultPort is WireGuard's usual UDP port.
const DefaultPort = 51820

// Config configures Start.
type Config struct {
	// Listen is the UDP address: the zero address (or 0.0.0.0 / ::, for
	// one family) listens on every address; port 0 picks a free one.
	Listen netip.AddrPort
	// ListenPacket opens the UDP socket (tunsocks' direct dialer's).
	// Required.
	ListenPacket ListenFunc
	// PrivateKey is the server's key. Required.
	PrivateKey Key
	// Peers may join; more can be set later with SetPeers.
	Peers []Peer
	// MTU of the tunnel; default DefaultMTU. The peers' configs should
	// carry the same.
	MTU int
	// Queue is the pipe's queue per direction, in packets; default
	// DefaultPipeQueue.
	Queue int
	// Logger; nil discards. wireguard-go's own messages go to it at debug
	// level (errors at warn), with component=wireguard.
	Logger *slog.Logger
}

// Inbound is a running WireGuard server whose decrypted packets come out of
// Device (hand it to stack.New).
type Inbound struct {
	dev  *device.Device
	pipe *Pipe
	bind *Bind
	log  *slog.Logger
	port uint16

	mu     sync.RWMutex
	peers  map[Key]Peer          // by public key
	byAddr map[netip.Addr]string // tunnel address -> peer name

	closeOnce sync.Once
}

// Start configures a wireguard-go device with the server key and peers and
// opens its UDP socket. ctx bounds only the start.
func Start(ctx context.Context, cfg Config) (*Inbound, error) {
	if cfg.ListenPacket == nil {
		return nil, errors.New("wg: Config.ListenPacket is nil")
	}
	if cfg.PrivateKey.IsZero() {
		return nil, errors.New("wg: Config.PrivateKey is not set")
	}
	if cfg.MTU == 0 {
		cfg.MTU = DefaultMTU
	}
	if cfg.MTU < 1280 || cfg.MTU > 65535 {
		return nil, fmt.Errorf("wg: MTU %d: want 1280..65535 (IPv6 inside the tunnel needs 1280)", cfg.MTU)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pipe := NewPipe(PipeConfig{MTU: cfg.MTU, Queue: cfg.Queue})
	bind := NewBind(ctx, cfg.ListenPacket, cfg.Listen.Addr())
	wlog := log.With("component", "wireguard")
	dev := device.NewDevice(pipe.WireGuardEnd(), bind, &device.Logger{
		Verbosef: func(format string, args ...any) {
			if wlog.Enabled(ctx, slog.LevelDebug) {
				wlog.Debug(fmt.Sprintf(format, args...))
			}
		},
		Errorf: func(format string, args ...any) { wlog.Warn(fmt.Sprintf(format, args...)) },
	})
	in := &Inbound{dev: dev, pipe: pipe, bind: bind, log: log, peers: map[Key]Peer{}, byAddr: map[netip.Addr]string{}}
	var b strings.Builder
	fmt.Fprintf(&b, "private_key=%s\nlisten_port=%d\nreplace_peers=true\n", cfg.PrivateKey.Hex(), cfg.Listen.Port())
	writePeers(&b, nil, cfg.Peers)
	if err := dev.IpcSet(b.String()); err != nil {
		dev.Close()
		return nil, fmt.Errorf("wg: configure device: %w", err)
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		return nil, fmt.Errorf("wg: listen on udp %s: %w", cfg.Listen, err)
	}
	in.setPeersLocked(cfg.Peers)
	if addrs := bind.LocalAddrs(); len(addrs) > 0 {
		in.port = addrs[0].Port()
	}
	return in, nil
}

// writePeers writes the UAPI lines that turn the peer set old into new:
// removals for peers no longer there, and each current peer with exactly
// its tunnel addresses.
func writePeers(b *strings.Builder, old map[Key]Peer, peers []Peer) {
	keep := map[Key]bool{}
	for _, p := range peers {
		keep[p.Public] = true
	}
	for k := range old {
		if !keep[k] {
			fmt.Fprintf(b, "public_key=%s\nremove=true\n", k.Hex())
		}
	}
	for _, p := range peers {
		if o, ok := old[p.Public]; ok && o.Addr4 == p.Addr4 && o.Addr6 == p.Addr6 {
			continue // unchanged: leave its session alone
		}
		fmt.Fprintf(b, "public_key=%s\nreplace_allowed_ips=true\n", p.Public.Hex())
		fmt.Fprintf(b, "allowed_ip=%s\n", netip.PrefixFrom(p.Addr4, 32))
		fmt.Fprintf(b, "allowed_ip=%s\n", netip.PrefixFrom(p.Addr6, 128))
	}
}

func (in *Inbound) setPeersLocked(peers []Peer) {
	in.peers = make(map[Key]Peer, len(peers))
	in.byAddr = make(map[netip.Addr]string, 2*len(peers))
	for _, p := range peers {
		in.peers[p.Public] = p
		in.byAddr[p.Addr4] = p.Name
		in.byAddr[p.Addr6] = p.Name
	}
}

// SetPeers makes peers the set that may connect: a peer no longer in it is
// cut off at once (its session dropped), a new one may join, one whose
// addresses changed gets the new ones. Sessions of unchanged peers go on.
func (in *Inbound) SetPeers(peers []Peer) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	var b strings.Builder
	writePeers(&b, in.peers, peers)
	if b.Len() > 0 {
		if err := in.dev.IpcSet(b.String()); err != nil {
			return fmt.Errorf("wg: update peers: %w", err)
		}
	}
	in.setPeersLocked(peers)
	return nil
}

// Peers returns the peers that may connect, sorted by name.
func (in *Inbound) Peers() []Peer {
	in.mu.RLock()
	defer in.mu.RUnlock()
	out := make([]Peer, 0, len(in.peers))
	for _, p := range in.peers {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Peer) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// PeerName names the peer a tunnel address belongs to; "" for none.
// WireGuard drops a peer's packets whose source is not one of its own
// addresses, so the source of a flow that came through the tunnel is its
// peer's.
func (in *Inbound) PeerName(a netip.Addr) string {
	in.mu.RLock()
	defer in.mu.RUnlock()
	return in.byAddr[a.Unmap()]
}

// Device is the stack's end of the pipe: give it to stack.New, which then
// owns it (closing the stack closes the pipe, which closes the device).
func (in *Inbound) Device() *End { return in.pipe.StackEnd() }

// Port is the UDP port the server listens on.
func (in *Inbound) Port() uint16 { return in.port }

// LocalAddrs are the UDP addresses the server listens on.
func (in *Inbound) LocalAddrs() []netip.AddrPort { return in.bind.LocalAddrs() }

// PipeStats reports the packets between WireGuard and the stack.
func (in *Inbound) PipeStats() (toStack, fromStack PipeStats) { return in.pipe.Stats() }

// PeerStatus is what the device knows about one peer.
type PeerStatus struct {
	Name          string
	PublicKey     Key
	Endpoint      string    // where its packets last came from; "" before any
	LastHandshake time.Time // zero before the first handshake
	RxBytes       uint64    // received from the peer (its uploads), encrypted size
	TxBytes       uint64    // sent to the peer
}

// Status reads every peer's state from the device (the UAPI "get"), sorted
// by name.
func (in *Inbound) Status() ([]PeerStatus, error) {
	text, err := in.dev.IpcGet()
	if err != nil {
		return nil, fmt.Errorf("wg: device status: %w", err)
	}
	sts, err := parseStatus(text)
	if err != nil {
		return nil, err
	}
	in.mu.RLock()
	for i := range sts {
		sts[i].Name = in.peers[sts[i].PublicKey].Name
	}
	in.mu.RUnlock()
	slices.SortFunc(sts, func(a, b PeerStatus) int { return strings.Compare(a.Name, b.Name) })
	return sts, nil
}

// parseStatus reads the peers out of a UAPI "get" answer.
func parseStatus(text string) ([]PeerStatus, error) {
	var out []PeerStatus
	var cur *PeerStatus
	var sec, nsec int64
	flush := func() {
		if cur != nil {
			if sec != 0 || nsec != 0 {
				cur.LastHandshake = time.Unix(sec, nsec)
			}
			out = append(out, *cur)
		}
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		if key == "public_key" {
			flush()
			k, err := parseHexKey(val)
			if err != nil {
				return nil, err
			}
			cur, sec, nsec = &PeerStatus{PublicKey: k}, 0, 0
			continue
		}
		if cur == nil {
			continue // device lines
		}
		var err error
		switch key {
		case "endpoint":
			cur.Endpoint = val
		case "last_handshake_time_sec":
			sec, err = strconv.ParseInt(val, 10, 64)
		case "last_handshake_time_nsec":
			nsec, err = strconv.ParseInt(val, 10, 64)
		case "rx_bytes":
			cur.RxBytes, err = strconv.ParseUint(val, 10, 64)
		case "tx_bytes":
			cur.TxBytes, err = strconv.ParseUint(val, 10, 64)
		}
		if err != nil {
			return nil, fmt.Errorf("wg: device status %s=%q: %w", key, val, err)
		}
	}
	flush()
	return out, nil
}

// Close stops the device and closes its socket and the pipe. Idempotent.
func (in *Inbound) Close() error {
	in.closeOnce.Do(func() {
		in.dev.Close()
		in.pipe.Close()
	})
	return nil
}
