#!/usr/bin/env bash
# ensure-voldelta-before.sh: build voldelta as it was before the change-hint
# work (issue 10) into $CACHE/bin/voldelta-<commit>, once, from this
# repository's history: `make bench-scale` runs its full scan of the same
# delta in a row of its own, the bound "without hints no worse than
# before". Needs the git history (a clone, not an archive) and the Go
# module proxy. Prints the binary's path on success.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
go=${GO:-go}
cache=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/voldelta}
# The last commit before the change-hint work.
commit=${VOLDELTA_BEFORE_COMMIT:-e65a542}
bin="$cache/bin/voldelta-$commit"

if [ -x "$bin" ]; then
  echo "ensure-voldelta-before: $bin is built" >&2
  echo "$bin"
  exit 0
fi
if ! git -C "$root" cat-file -e "$commit^{commit}" 2>/dev/null; then
  echo "ensure-voldelta-before: commit $commit is not in $root's git history (a shallow clone or an archive?): fetch it (git fetch --unshallow) or run bench scale without -voldelta-before" >&2
  exit 1
fi
mkdir -p "$cache/bin"
src=$(mktemp -d "${TMPDIR:-/tmp}/voldelta-before.XXXXXX")
trap 'rm -rf "$src"' EXIT
git -C "$root" archive "$commit" | tar -x -C "$src"
echo "ensure-voldelta-before: building voldelta at $commit into $bin..." >&2
(cd "$src" && nice -n 19 "$go" build -trimpath -ldflags "-X main.version=$commit" -o "$bin.tmp.$$" ./cmd/voldelta)
mv -f "$bin.tmp.$$" "$bin"
echo "$bin"
