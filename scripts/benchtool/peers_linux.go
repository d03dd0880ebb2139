package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// tunDev is the TUN device every TUN program of the benchmark makes, one
// program at a time, in the app host.
const tunDev = "tsk0"

// parsePeer reads one -peer NAME=PATH: a TUN program other than tunsocks,
// measured in the same run as tunsocks with the same SOCKS server.
func parsePeer(s string) (path, string, error) {
	name, bin, ok := strings.Cut(s, "=")
	if !ok || bin == "" {
		return 0, "", fmt.Errorf("-peer %q: want NAME=PATH, NAME one of tun2socks, hev, sing-box", s)
	}
	var p path
	switch strings.ToLower(strings.TrimSpace(name)) {
	case "tun2socks":
		p = t2sPath
	case "hev", "hev-socks5-tunnel":
		p = hevPath
	case "sing-box", "singbox":
		p = singboxPath
	default:
		return 0, "", fmt.Errorf("-peer %q: unknown peer %q; want tun2socks, hev (hev-socks5-tunnel) or sing-box", s, name)
	}
	if st, err := os.Stat(bin); err != nil {
		return 0, "", fmt.Errorf("-peer %s: %w", name, err)
	} else if st.IsDir() || st.Mode()&0o111 == 0 {
		return 0, "", fmt.Errorf("-peer %s: %s is not an executable file", name, bin)
	}
	return p, bin, nil
}

// tunCommand is the command line that runs p's TUN program on device
// tunDev with the given MTU, relaying everything through the SOCKS5 server
// at socks. Configuration files the program needs are written into dir.
// Every program gets only what the lab needs: no routes of its own
// (benchtool points the app host's default routes at the device), no DNS
// hijacking, no API listener, logging of warnings only.
//
// tag, when not "", is added to the names of the files -run-args has
// tunsocks write (see tagOutputs), so that runs going at the same time
// (the round-trip rounds') do not write the same file.
func (b *bench) tunCommand(p path, mtu int, socks netip.AddrPort, dir, tag string) (string, []string, error) {
	switch p {
	case tunPath, sysPath, aaPath: // aaPath: the A/A column, the gVisor stack again
		args := []string{"run", "--proxy", "socks5://" + socks.String(),
			"--tun", tunDev, "--mtu", strconv.Itoa(mtu), "--summary-interval", "0"}
		if p == sysPath {
			args = append(args, "--tcp-stack", "system")
		}
		if b.cfg.heapDir != "" {
			args = append(args, "--pprof", pprofAddr)
		}
		bin := b.cfg.tunsocks
		if p == aaPath && b.cfg.aaTunsocks != "" {
			bin = b.cfg.aaTunsocks
		}
		return bin, append(args, tagOutputs(strings.Fields(b.cfg.runArgs), tag)...), nil
	case t2sPath:
		// tun2socks creates the device and leaves it down, without an
		// address; benchtool brings it up (see upAndRoute).
		return b.cfg.peers[p], []string{"-device", "tun://" + tunDev, "-proxy", "socks5://" + socks.String(),
			"-mtu", strconv.Itoa(mtu), "-loglevel", "warn"}, nil
	case hevPath:
		// hev-socks5-tunnel reads one YAML file; its defaults otherwise
		// (UDP relayed by UDP ASSOCIATE, 64 KiB TCP buffers, 86,016-byte
		// task stacks).
		conf := fmt.Sprintf("tunnel:\n  name: %s\n  mtu: %d\n  multi-queue: false\n  ipv4: 198.18.0.1\n"+
			"socks5:\n  address: %s\n  port: %d\n  udp: 'udp'\n"+
			"misc:\n  log-level: warn\n  limit-nofile: %d\n",
			tunDev, mtu, socks.Addr(), socks.Port(), maxOpenFiles)
		f := filepath.Join(dir, "hev.yml")
		if err := os.WriteFile(f, []byte(conf), 0o600); err != nil {
			return "", nil, err
		}
		return b.cfg.peers[p], []string{f}, nil
	case singboxPath:
		// A tun inbound with the gVisor stack and no routes of its own, one
		// SOCKS5 outbound that takes everything.
		conf := map[string]any{
			"log": map[string]any{"level": "warn"},
			"inbounds": []any{map[string]any{
				"type": "tun", "tag": "tun-in", "interface_name": tunDev,
				"address": []string{"172.19.0.1/30"}, "mtu": mtu,
				"auto_route": false, "stack": "gvisor",
			}},
			"outbounds": []any{map[string]any{
				"type": "socks", "tag": "proxy", "version": "5",
				"server": socks.Addr().String(), "server_port": socks.Port(),
			}},
			"route": map[string]any{"final": "proxy"},
		}
		data, err := json.MarshalIndent(conf, "", "  ")
		if err != nil {
			return "", nil, err
		}
		f := filepath.Join(dir, "sing-box.json")
		if err := os.WriteFile(f, data, 0o600); err != nil {
			return "", nil, err
		}
		return b.cfg.peers[p], []string{"run", "-c", f, "-D", dir, "--disable-color"}, nil
	}
	return "", nil, fmt.Errorf("no TUN program for path %v", p)
}

// copySocks is a SOCKS5 server that copies bytes through its own buffers
// instead of splicing them in the kernel, as most deployed servers do:
// microsocks or dante. It listens on the proxy host next to `tunsocks
// server`, for the round-trip rows (a splicing server hides a wakeup) and
// the idle-connection rows (a splicing server holds four pipe descriptors
// per connection; the descriptor limit would stop it first).
type copySocks struct {
	name string // microsocks, dante
	bin  string
}

// command is the command line of the copying server listening on addr,
// with any configuration file written into dir.
func (c copySocks) command(addr netip.AddrPort, external netip.Addr, dir string) (string, []string, error) {
	switch c.name {
	case "microsocks":
		return c.bin, []string{"-i", addr.Addr().String(), "-p", strconv.Itoa(int(addr.Port()))}, nil
	case "dante":
		conf := fmt.Sprintf("logoutput: stderr\ninternal: %s port = %d\nexternal: %s\n"+
			"clientmethod: none\nsocksmethod: none\nuser.privileged: root\nuser.unprivileged: nobody\n"+
			"client pass {\n  from: 0.0.0.0/0 to: 0.0.0.0/0\n}\nsocks pass {\n  from: 0.0.0.0/0 to: 0.0.0.0/0\n}\n",
			addr.Addr(), addr.Port(), external)
		f := filepath.Join(dir, "danted.conf")
		if err := os.WriteFile(f, []byte(conf), 0o644); err != nil {
			return "", nil, err
		}
		return c.bin, []string{"-f", f}, nil
	}
	return "", nil, fmt.Errorf("unknown copying SOCKS server %q", c.name)
}

// outputFlags are the flags of `tunsocks run` that name a file it writes.
var outputFlags = []string{"cpuprofile", "trace"}

// tagOutputs returns args with ".tag" added to the file name each output
// flag gives (--cpuprofile F, -cpuprofile=F, ...), args itself when tag is
// "".
func tagOutputs(args []string, tag string) []string {
	if tag == "" {
		return args
	}
	out := slices.Clone(args)
	isOutput := func(a string) bool {
		return strings.HasPrefix(a, "-") && slices.Contains(outputFlags, strings.TrimLeft(a, "-"))
	}
	for i, a := range out {
		if name, value, ok := strings.Cut(a, "="); ok && isOutput(name) {
			out[i] = name + "=" + value + "." + tag
		} else if isOutput(a) && i+1 < len(out) {
			out[i+1] += "." + tag
		}
	}
	return out
}
