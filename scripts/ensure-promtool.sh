#!/usr/bin/env bash
# ensure-promtool.sh: build the promtool pinned in
# tools/promtool/go.mod into $CACHE/bin/promtool, once: Prometheus' own
# rule checker and alert unit tester, which deploy/monitoring's tests run.
# Built without the service discoveries (tag remove_all_sd): rule checks
# and tests need none, and they are most of its build time.
# Idempotent; needs only the Go module proxy. Prints the binary's path.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
go=${GO:-go}
cache=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/voldelta}
bin="$cache/bin/promtool"
stamp="$bin.version"

version=$(awk '{ for (i = 1; i < NF; i++) if ($i == "github.com/prometheus/prometheus" && $(i+1) ~ /^v/) { print $(i+1); exit } }' "$root/tools/promtool/go.mod")
if [ -z "$version" ]; then
  echo "ensure-promtool: no github.com/prometheus/prometheus requirement in tools/promtool/go.mod" >&2
  exit 1
fi

tags=remove_all_sd
if [ -x "$bin" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$version $tags" ]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$cache/bin"
echo "ensure-promtool: building promtool $version into $bin..." >&2
tmp="$bin.tmp.$$"
trap 'rm -f "$tmp"' EXIT
(cd "$root/tools/promtool" && nice -n 19 "$go" build -trimpath -tags "$tags" -o "$tmp" github.com/prometheus/prometheus/cmd/promtool)
mv -f "$tmp" "$bin"
echo "$version $tags" > "$stamp"
echo "$bin"
