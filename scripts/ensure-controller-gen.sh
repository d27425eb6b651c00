#!/usr/bin/env bash
# ensure-controller-gen.sh: build the controller-gen pinned in
# tools/controller-gen/go.mod into $CACHE/bin/controller-gen, once.
# Idempotent; needs only the Go module proxy. Prints the binary's path.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
go=${GO:-go}
cache=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/voldelta}
bin="$cache/bin/controller-gen"
stamp="$bin.version"

version=$(awk '{ for (i = 1; i < NF; i++) if ($i == "sigs.k8s.io/controller-tools" && $(i+1) ~ /^v/) { print $(i+1); exit } }' "$root/tools/controller-gen/go.mod")
if [ -z "$version" ]; then
  echo "ensure-controller-gen: no sigs.k8s.io/controller-tools requirement in tools/controller-gen/go.mod" >&2
  exit 1
fi

if [ -x "$bin" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$version" ]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$cache/bin"
echo "ensure-controller-gen: building controller-gen $version into $bin..." >&2
tmp="$bin.tmp.$$"
trap 'rm -f "$tmp"' EXIT
(cd "$root/tools/controller-gen" && nice -n 19 "$go" build -trimpath -o "$tmp" sigs.k8s.io/controller-tools/cmd/controller-gen)
mv -f "$tmp" "$bin"
echo "$version" > "$stamp"
echo "$bin"
