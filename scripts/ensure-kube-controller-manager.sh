#!/usr/bin/env bash
# ensure-kube-controller-manager.sh: build the pinned kube-controller-manager
# used by the Kubernetes integration tests (internal/k8stest: Deployments,
# ReplicaSets and StatefulSets reconciled for real) into
# $CACHE/bin/kube-controller-manager, once. Idempotent: does nothing when the
# binary is present and was built from the version pinned in
# tools/kube-controller-manager/go.mod. That module pins the same
# k8s.io/kubernetes version, requirements and replacements as
# tools/kube-apiserver, so after kube-apiserver was built most packages come
# from the Go build cache: 9.8 min measured on two cores after kube-apiserver
# had been built (longer cold). Needs only the Go module proxy. Prints the
# binary's path on success.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
go=${GO:-go}
cache=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/voldelta}
bin="$cache/bin/kube-controller-manager"
stamp="$bin.version"

version=$(awk '{ for (i = 1; i < NF; i++) if ($i == "k8s.io/kubernetes" && $(i+1) ~ /^v/) { print $(i+1); exit } }' "$root/tools/kube-controller-manager/go.mod")
if [ -z "$version" ]; then
  echo "ensure-kube-controller-manager: no k8s.io/kubernetes requirement in tools/kube-controller-manager/go.mod" >&2
  exit 1
fi

if [ -x "$bin" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$version" ]; then
  echo "ensure-kube-controller-manager: $bin is up to date ($version)" >&2
  echo "$bin"
  exit 0
fi

major=${version#v}; major=${major%%.*}
minor=${version#v"$major".}; minor=${minor%%.*}

mkdir -p "$cache/bin"
echo "ensure-kube-controller-manager: building kube-controller-manager $version into $bin (takes minutes; longer without a warm build cache)..." >&2
start=$(date +%s)
tmp="$bin.tmp.$$"
trap 'rm -f "$tmp"' EXIT
(cd "$root/tools/kube-controller-manager" && CGO_ENABLED=0 nice -n 19 "$go" build -trimpath \
  -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=$major -X k8s.io/component-base/version.gitMinor=$minor" \
  -o "$tmp" k8s.io/kubernetes/cmd/kube-controller-manager)
mv -f "$tmp" "$bin"
echo "$version" > "$stamp"
echo "ensure-kube-controller-manager: built in $(( $(date +%s) - start ))s" >&2
echo "$bin"
