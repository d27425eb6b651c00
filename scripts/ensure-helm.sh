#!/usr/bin/env bash
# ensure-helm.sh: build the helm pinned in tools/helm/go.mod (helm.sh/helm/v3,
# cmd/helm) into $CACHE/bin/helm, once. deploy's chart test lints and renders
# charts/voldelta with it, and the Kubernetes integration test applies what it
# renders. Idempotent: does nothing when the binary is present and was built
# from the pinned version. The build took 7 min 16 s (436 s) on two cores
# shared with other builds, a relink from Go's build cache 43 s; it needs
# only the Go module proxy. Prints the binary's path.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
go=${GO:-go}
cache=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/voldelta}
bin="$cache/bin/helm"
stamp="$bin.version"

version=$(awk '{ for (i = 1; i < NF; i++) if ($i == "helm.sh/helm/v3" && $(i+1) ~ /^v/) { print $(i+1); exit } }' "$root/tools/helm/go.mod")
if [ -z "$version" ]; then
  echo "ensure-helm: no helm.sh/helm/v3 requirement in tools/helm/go.mod" >&2
  exit 1
fi

# helm's default Kubernetes version (helm template, helm lint) is set at
# link time from its client-go, as helm's own Makefile does: v0.37 -> 1.37.
clientgo=$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "$root/tools/helm/go.mod")
if [[ ! "$clientgo" =~ ^v0\.([0-9]+)\. ]]; then
  echo "ensure-helm: no k8s.io/client-go v0.N requirement in tools/helm/go.mod" >&2
  exit 1
fi
kminor=${BASH_REMATCH[1]}
want="$version kubernetes-1.$kminor"

if [ -x "$bin" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$cache/bin"
echo "ensure-helm: building helm $version into $bin..." >&2
start=$(date +%s)
tmp="$bin.tmp.$$"
trap 'rm -f "$tmp"' EXIT
# `helm version` reports the version; the Kubernetes version is the one
# helm template and helm lint assume without a cluster.
ldflags="-X helm.sh/helm/v3/internal/version.version=$version"
for pkg in pkg/chartutil pkg/lint/rules; do
  ldflags="$ldflags -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$kminor"
done
(cd "$root/tools/helm" && nice -n 19 "$go" build -trimpath -ldflags "$ldflags" -o "$tmp" helm.sh/helm/v3/cmd/helm)
mv -f "$tmp" "$bin"
echo "$want" > "$stamp"
echo "ensure-helm: built in $(( $(date +%s) - start )) s" >&2
echo "$bin"
