#!/usr/bin/env bash
# Nightly fuzzing: runs every fuzz target of the module, one after another,
# for -fuzztime each (default 60s), with
#   go test -run '^$' -fuzz '^Name$' -fuzztime T ./pkg
# Not part of scripts/test.sh (about 12 targets x 60 s is too long for every
# run); `go test ./...` there still runs each target's seed corpus
# (f.Add and testdata/fuzz) as a normal test.
#
# Usage: ./scripts/fuzz.sh [-fuzztime 60s] [-parallel N] [target regexp]
#   e.g. ./scripts/fuzz.sh -fuzztime 10m 'FuzzRead'
# When a target fails, go test writes the input to the package's
# testdata/fuzz/<Target>/ and prints how to rerun it; the script goes on
# with the other targets and exits 1 at the end, naming the failures. Fix
# the bug, then commit that file: it stays in the seed corpus and becomes a
# regression test. Needs no root.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

fuzztime=60s
parallel=${FUZZ_PARALLEL:-}
filter=.
while [ $# -gt 0 ]; do
	case "$1" in
	-fuzztime) fuzztime=$2; shift 2 ;;
	-parallel) parallel=$2; shift 2 ;;
	-h | --help) sed -n '2,14p' "$0"; exit 0 ;;
	-*) echo "scripts/fuzz.sh: unknown flag $1 (want -fuzztime, -parallel)" >&2; exit 2 ;;
	*) filter=$1; shift ;;
	esac
done

# "pkg Name" for every fuzz target, found by go test -list (so build tags
# and _linux files count as they do for go test).
targets=()
while read -r pkg; do
	while read -r name; do
		[[ $name == Fuzz* ]] && [[ $name =~ $filter ]] && targets+=("$pkg $name")
	done < <(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true)
done < <(go list ./...)
if [ ${#targets[@]} -eq 0 ]; then
	echo "scripts/fuzz.sh: no fuzz target matches $filter" >&2
	exit 2
fi

echo "fuzzing ${#targets[@]} targets for $fuzztime each"
failed=()
for t in "${targets[@]}"; do
	pkg=${t% *} name=${t#* }
	printf '\n=== %s %s\n' "$name" "$pkg"
	if ! go test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" ${parallel:+-parallel "$parallel"} "$pkg"; then
		failed+=("$name ($pkg)")
	fi
done

if [ ${#failed[@]} -gt 0 ]; then
	printf '\nFAILED: %s\n' "${failed[@]}"
	echo "the failing inputs are under each package's testdata/fuzz/: fix the bug, then commit them"
	exit 1
fi
printf '\nall %d targets ran %s without a failure\n' "${#targets[@]}" "$fuzztime"
