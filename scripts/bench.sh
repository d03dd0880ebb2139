#!/usr/bin/env bash
# Performance benchmark of tunsocks: builds tunsocks and scripts/benchtool,
# then measures, in a throwaway lab of network namespaces
# (app ── proxy ── remote), several ways from the app host to the remote host:
#   kernel      plain IP forwarding through the proxy host, no proxy at all
#   socks-only  the client speaks SOCKS to `tunsocks server` itself, no TUN
#   tunsocks    the app's default route is the TUN of `tunsocks run`
#   tunsocks-system  the same with `tunsocks run --tcp-stack system`
#               (-tcp-stacks gvisor or -tcp-stacks system measures one)
#   peers       the same through another TUN program the user built, each
#               with -peer NAME=PATH: tun2socks, hev (hev-socks5-tunnel),
#               sing-box (with_gvisor); the tool writes their configuration
# and prints one markdown table (iperf3 TCP throughput up/down, 1 and 4
# streams, MTU 1500 and 9000; connection rate and the CPU time per
# connection; 1-byte latency p50/p99, also through a SOCKS server that
# copies (microsocks, -copy-socks), with the TUN program's context
# switches and CPU time per round trip; the TUN program's RSS at start
# (after one connection made once it has started; also split into
# anonymous and file-backed pages), after 30 s of bulk and 30 s idle,
# with 1,000 and 8,000 idle TCP connections
# (and whether they all still echo), per connection, per UDP flow, and
# after 50,000 new UDP flows), then the ratios to socks-only against the
# issue's targets and tunsocks' figures against its limits (MET / NOT MET).
# The round-trip rows are measured in interleaved rounds, not column by
# column: every column (kernel, socks-only, each TUN program) takes a turn
# of 50 round trips on its open connection in each of 40 rounds
# (-rtt-rounds), the order rotating, every TUN program running all along
# in an app namespace of its own; a column's percentiles are over all its
# samples, and a TUN program's switches and CPU are counted over its own
# round trips only. Load that comes and goes then falls on every column
# alike (-rtt-aa adds a second tunsocks column to check how alike).
# The iperf3 rows are interleaved too: in each of 5 rounds (-iperf-rounds)
# every column runs each row once, the order changing so that every column
# runs after every other equally often, every TUN program running all
# along in its own app namespace; a column's figure is the median of its
# runs, the ratio to socks-only the ratio of the medians, printed with the
# lowest and highest of the rounds' own ratios (-iperf-aa adds a second
# tunsocks column; -iperf-rounds 0 measures the old way, one run per
# column, each column in its own phase).
# A benchmark, not a test: it exits 0 whatever the numbers are.
#
# Usage: ./scripts/bench.sh [benchtool flags, e.g. -t 10s -mtus 1500
#        -peer hev=/path/to/hev-socks5-tunnel]
# Needs root (re-runs itself under sudo); installs iperf3, proxychains4 and
# microsocks with apt-get when missing. Takes about 10 minutes at one MTU,
# and about 4.5 more per peer (the iperf3 rounds: ~1.7 minutes per column
# and MTU, -iperf-rounds 3 or -iperf-streams 1 for less). Nothing outside
# the lab's namespaces is touched, and they are removed on exit and on
# Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

if [ "$(id -u)" != 0 ]; then
	if command -v sudo >/dev/null; then
		exec sudo --preserve-env=GOPATH,GOCACHE,GOMODCACHE,GOFLAGS,GOPROXY env "PATH=$PATH" "$0" "$@"
	fi
	echo "scripts/bench.sh: needs root (TUN devices, network namespaces, apt-get); run it as root or install sudo" >&2
	exit 1
fi

missing=()
for p in iperf3:iperf3 proxychains4:proxychains4 microsocks:microsocks ip:iproute2; do
	command -v "${p%%:*}" >/dev/null 2>&1 || missing+=("${p#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

bin=$(mktemp -d /tmp/tunsocks-bench.XXXXXX)
trap 'rm -rf "$bin"' EXIT
echo "building tunsocks and benchtool ($(git describe --always --dirty 2>/dev/null || echo unknown))" >&2
CGO_ENABLED=0 go build -tags urfave_cli_no_docs -o "$bin/tunsocks" ./cmd/tunsocks # the README's build
go build -o "$bin/benchtool" ./scripts/benchtool
# Not exec: the trap removes the binaries afterwards. benchtool handles
# SIGINT itself and removes its lab before exiting.
"$bin/benchtool" -tunsocks "$bin/tunsocks" "$@"
