#!/usr/bin/env bash
# Throughput of a "phone" through 'tunsocks wg': a network namespace runs
# Debian's wireguard-go (userspace) with the kernel's TCP, configured from
# the .conf tunsocks writes; tunsocks (unprivileged user not needed here)
# runs in a second namespace with --proxy direct; iperf3 serves on that
# namespace's loopback address 10.98.0.1, reached through the tunnel.
# Both namespaces are removed on exit. Needs root, iperf3, wireguard-go, wg.
#
# Usage: sudo ./scripts/wg-bench.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
for t in iperf3 wireguard-go wg; do command -v $t >/dev/null || { echo "needs $t" >&2; exit 1; }; done
dir=$(mktemp -d /tmp/tunsocks-wg-bench.XXXXXX)
CGO_ENABLED=0 go build -tags urfave_cli_no_docs -o "$dir/tunsocks" ./cmd/tunsocks # the README's build
P=tsk-$$-wgbph; H=tsk-$$-wgbh; IF=tskwgb$$
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	sleep 0.5
	ip netns del $P 2>/dev/null || true
	ip netns del $H 2>/dev/null || true
	rm -f /var/run/wireguard/$IF.sock
	rm -rf "$dir"
}
trap cleanup EXIT
ip netns add $P
ip netns add $H
ip -n $P link set lo up
ip -n $H link set lo up
ip -n $H link add down0 type veth peer name up0 netns $P
ip -n $H addr add 10.99.0.1/24 dev down0
ip -n $H link set down0 up
ip -n $P addr add 10.99.0.2/24 dev up0
ip -n $P link set up0 up
ip -n $H addr add 10.98.0.1/32 dev lo
ip netns exec $H "$dir/tunsocks" wg --proxy direct --listen 10.99.0.1:51820 --state "$dir/wg.json" \
	--qr-png "$dir/qr" --peer bench --qr=false --summary-interval 0 >"$dir/tunsocks.log" 2>&1 &
pids+=($!)
ip netns exec $H iperf3 -s -B 10.98.0.1 >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 50); do [ -s "$dir/qr/bench.conf" ] && break; sleep 0.1; done
grep -v -E '^(Address|DNS|MTU)' "$dir/qr/bench.conf" >"$dir/bench.wg"
WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 ip netns exec $P wireguard-go -f $IF >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 50); do [ -S /var/run/wireguard/$IF.sock ] && break; sleep 0.1; done
ip netns exec $P wg setconf $IF "$dir/bench.wg"
ip -n $P addr add 10.7.0.2/32 dev $IF
ip -n $P link set $IF mtu 1420 up
ip -n $P route add default dev $IF
sleep 1
echo "== upload (phone -> tunsocks -> iperf3)"
ip netns exec $P iperf3 -c 10.98.0.1 -t "$secs" -f m | grep -E "sender|receiver"
echo "== download (iperf3 -> tunsocks -> phone)"
ip netns exec $P iperf3 -c 10.98.0.1 -t "$secs" -R -f m | grep -E "sender|receiver"
kill "${pids[0]}"
wait "${pids[0]}" || true
grep "final summary" "$dir/tunsocks.log"
