#!/usr/bin/env bash
# ensure-restic.sh: build the pinned restic client that the benchmark harness
# (bench/) compares voldelta with into $CACHE/bin/restic, once. Idempotent:
# does nothing when the binary is present and was built from the version
# pinned in tools/restic/go.mod. The build takes a few minutes and needs only
# the Go module proxy. Prints the binary's path on success.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
go=${GO:-go}
cache=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/voldelta}
bin="$cache/bin/restic"
stamp="$bin.version"

# The requirement is either a line of a require block or a one-line require.
version=$(awk '{ for (i = 1; i < NF; i++) if ($i == "github.com/restic/restic") { print $(i + 1); exit } }' \
  "$root/tools/restic/go.mod")
if [ -z "$version" ]; then
  echo "ensure-restic: no github.com/restic/restic requirement in tools/restic/go.mod" >&2
  exit 1
fi

if [ -x "$bin" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$version" ]; then
  echo "ensure-restic: $bin is up to date ($version)" >&2
  echo "$bin"
  exit 0
fi

mkdir -p "$cache/bin"
echo "ensure-restic: building restic $version into $bin (takes a few minutes)..." >&2
start=$(date +%s)
tmp="$bin.tmp.$$"
trap 'rm -f "$tmp"' EXIT
(cd "$root/tools/restic" && nice -n 19 "$go" build -trimpath -o "$tmp" github.com/restic/restic/cmd/restic)
mv -f "$tmp" "$bin"
echo "$version" > "$stamp"
echo "ensure-restic: built in $(( $(date +%s) - start ))s" >&2
echo "$bin"
