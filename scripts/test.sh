#!/usr/bin/env bash
# Runs every check and every test of tunsocks: formatting, vet, staticcheck,
# cross-compilation, and `go test -race` over all packages, including the
# tests that need root, /dev/net/tun, network namespaces and real SOCKS peers
# (curl, ncat, proxychains4, dante-server, microsocks, tinyproxy, mitmproxy, dig,
# dnsmasq, tshark...).
#
# Usage: ./scripts/test.sh [extra go test flags, e.g. -run TestCurl]
# It re-runs itself under sudo when not root and installs the Debian packages
# it needs when they are missing. Under CI=true a test that would skip for
# lack of root, TUN or a peer fails instead.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin"

if [ "$(id -u)" != 0 ]; then
	if command -v sudo >/dev/null; then
		exec sudo --preserve-env=CI,GOPATH,GOCACHE,GOMODCACHE,GOFLAGS,GOPROXY env "PATH=$PATH" "$0" "$@"
	fi
	echo "scripts/test.sh: needs root (TUN devices, network namespaces, apt-get); run it as root or install sudo" >&2
	exit 1
fi

step() { printf '\n=== %s\n' "$*"; }

# command:package pairs for the peers and tools the tests use.
peers=(curl:curl ncat:ncat danted:dante-server microsocks:microsocks proxychains4:proxychains4
	iperf3:iperf3 dig:dnsutils dnsmasq:dnsmasq-base tshark:tshark socat:socat ping:iputils-ping ip:iproute2
	gcc:gcc nft:nftables tinyproxy:tinyproxy mitmdump:mitmproxy
	wireguard-go:wireguard-go wg:wireguard-tools zbarimg:zbar-tools dbus-daemon:dbus promtool:prometheus chromium:chromium
	setpriv:util-linux unshare:util-linux useradd:passwd chpasswd:passwd userdel:passwd getent:libc-bin)
missing=()
for p in "${peers[@]}"; do
	command -v "${p%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${p%%:*}" ] || missing+=("${p#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
	step "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

step "go mod download"
go mod download

step "gofmt"
bad=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$bad" ]; then echo "gofmt would change:"; echo "$bad"; exit 1; fi

step "go vet"
go vet ./...

step "staticcheck"
command -v staticcheck >/dev/null || go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
staticcheck ./...

step "cross-compile (darwin, windows, freebsd, android)"
for target in darwin/amd64 darwin/arm64 windows/amd64 freebsd/amd64 android/arm64; do
	GOOS=${target%/*} GOARCH=${target#*/} go build ./... || { echo "build failed for $target"; exit 1; }
done

step "go test -race"
# -p 2: the machine has 2 cores; the netns tests are heavy.
go test -race -count=1 -p 2 -timeout 40m ./... "$@"
