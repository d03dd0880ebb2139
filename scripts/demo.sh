#!/usr/bin/env bash
# The main job on a fresh Linux machine: build tunsocks and run its demo, a
# throwaway lab of network namespaces (app host -> tunsocks TUN -> SOCKS
# server -> remote host) that shows real flows going through tunsocks and
# removes everything it made. Needs root (re-runs itself under sudo); the
# machine's own network is never touched.
#
# Usage: ./scripts/demo.sh [--pcap FILE] [--log-level debug]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
if [ "$(id -u)" != 0 ]; then
	if command -v sudo >/dev/null; then
		exec sudo --preserve-env=GOPATH,GOCACHE,GOMODCACHE,GOFLAGS,GOPROXY env "PATH=$PATH" "$0" "$@"
	fi
	echo "scripts/demo.sh: needs root (network namespaces, a TUN device); run it as root or install sudo" >&2
	exit 1
fi
mkdir -p bin
CGO_ENABLED=0 go build -tags urfave_cli_no_docs -o bin/tunsocks ./cmd/tunsocks # the README's build
global=()
args=()
while [ $# -gt 0 ]; do
	case "$1" in
	--log-level | --log-format) global+=("$1" "$2"); shift 2 ;;
	*) args+=("$1"); shift ;;
	esac
done
exec bin/tunsocks "${global[@]}" demo "${args[@]}"
