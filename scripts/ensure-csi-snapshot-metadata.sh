#!/usr/bin/env bash
# ensure-csi-snapshot-metadata.sh: build the csi-snapshot-metadata sidecar
# (KEP-3314 changed block tracking) pinned in tools/csi-snapshot-metadata/go.mod
# into $CACHE/bin/csi-snapshot-metadata, once. The CSI snapshot metadata
# integration test (csi/snapmeta) runs it against the test's kube-apiserver.
# Idempotent: does nothing when the binary is present and was built from the
# pinned version. Needs only the Go module proxy (the module's client/
# submodule, which the proxy does not serve, is kept in
# tools/csi-snapshot-metadata/third_party/client). Prints the binary's path.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
go=${GO:-go}
cache=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/voldelta}
bin="$cache/bin/csi-snapshot-metadata"
stamp="$bin.version"
mod=github.com/kubernetes-csi/external-snapshot-metadata

version=$(awk -v m="$mod" '{ for (i = 1; i < NF; i++) if ($i == m && $(i+1) ~ /^v/) { print $(i+1); exit } }' "$root/tools/csi-snapshot-metadata/go.mod")
if [ -z "$version" ]; then
  echo "ensure-csi-snapshot-metadata: no $mod requirement in tools/csi-snapshot-metadata/go.mod" >&2
  exit 1
fi

if [ -x "$bin" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$version" ]; then
  echo "ensure-csi-snapshot-metadata: $bin is up to date ($version)" >&2
  echo "$bin"
  exit 0
fi

mkdir -p "$cache/bin"
echo "ensure-csi-snapshot-metadata: building csi-snapshot-metadata $version into $bin..." >&2
start=$(date +%s)
tmp="$bin.tmp.$$"
trap 'rm -f "$tmp"' EXIT
(cd "$root/tools/csi-snapshot-metadata" && CGO_ENABLED=0 nice -n 19 "$go" build -trimpath \
  -ldflags "-s -w -X main.version=$version" -o "$tmp" "$mod/cmd/csi-snapshot-metadata")
mv -f "$tmp" "$bin"
echo "$version" > "$stamp"
echo "ensure-csi-snapshot-metadata: built in $(( $(date +%s) - start ))s" >&2
echo "$bin"
