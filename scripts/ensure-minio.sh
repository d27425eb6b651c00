#!/usr/bin/env bash
# ensure-minio.sh: build the pinned MinIO server used by the object-store
# tests (objstore) into $CACHE/bin/minio, once. Idempotent: does nothing when
# the binary is present and was built from the version pinned in
# tools/minio/go.mod. The build takes several minutes and needs only the Go
# module proxy. Prints the binary's path on success.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
go=${GO:-go}
cache=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/voldelta}
bin="$cache/bin/minio"
stamp="$bin.version"

version=$(awk '$1 == "github.com/minio/minio" { print $2 }' "$root/tools/minio/go.mod")
if [ -z "$version" ]; then
  echo "ensure-minio: no github.com/minio/minio requirement in tools/minio/go.mod" >&2
  exit 1
fi

if [ -x "$bin" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$version" ]; then
  echo "ensure-minio: $bin is up to date ($version)" >&2
  echo "$bin"
  exit 0
fi

mkdir -p "$cache/bin"
echo "ensure-minio: building MinIO $version into $bin (takes several minutes)..." >&2
start=$(date +%s)
tmp="$bin.tmp.$$"
trap 'rm -f "$tmp"' EXIT
(cd "$root/tools/minio" && nice -n 19 "$go" build -trimpath -o "$tmp" github.com/minio/minio)
mv -f "$tmp" "$bin"
echo "$version" > "$stamp"
echo "ensure-minio: built in $(( $(date +%s) - start ))s" >&2
echo "$bin"
