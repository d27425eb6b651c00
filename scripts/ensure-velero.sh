#!/usr/bin/env bash
# ensure-velero.sh: build the Velero server pinned in tools/velero/go.mod
# (github.com/vmware-tanzu/velero, cmd/velero) and its AWS object store
# plugin pinned in tools/velero-plugin-for-aws/go.mod into $CACHE/bin, once.
# `make test-velero` runs them against the test control plane. Idempotent:
# does nothing when both binaries are present and were built from the
# pinned versions. Cold, the plugin took 5 min 51 s on two cores; both need
# only the Go module proxy. Prints the two paths.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
go=${GO:-go}
cache=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/voldelta}
mkdir -p "$cache/bin"

# build NAME TOOLDIR MODULE PACKAGE: build PACKAGE of the MODULE version
# required in tools/TOOLDIR/go.mod into $cache/bin/NAME.
build() {
  local name=$1 dir=$2 module=$3 pkg=$4
  local bin="$cache/bin/$name" stamp="$cache/bin/$name.version" version
  version=$(awk -v m="$module" '{ for (i = 1; i < NF; i++) if ($i == m && $(i+1) ~ /^v/) { print $(i+1); exit } }' "$root/tools/$dir/go.mod")
  if [ -z "$version" ]; then
    echo "ensure-velero: no $module requirement in tools/$dir/go.mod" >&2
    exit 1
  fi
  if [ -x "$bin" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$version" ]; then
    echo "$bin"
    return
  fi
  echo "ensure-velero: building $name $version into $bin..." >&2
  local start tmp
  start=$(date +%s)
  tmp="$bin.tmp.$$"
  (cd "$root/tools/$dir" && nice -n 19 "$go" build -trimpath -o "$tmp" "$pkg") || { rm -f "$tmp"; exit 1; }
  mv -f "$tmp" "$bin"
  echo "$version" > "$stamp"
  echo "ensure-velero: built $name in $(( $(date +%s) - start )) s" >&2
  echo "$bin"
}

build velero velero github.com/vmware-tanzu/velero github.com/vmware-tanzu/velero/cmd/velero
build velero-plugin-for-aws velero-plugin-for-aws github.com/vmware-tanzu/velero-plugin-for-aws \
  github.com/vmware-tanzu/velero-plugin-for-aws/velero-plugin-for-aws
