#!/usr/bin/env bash
# ensure-kube-apiserver.sh: build the pinned kube-apiserver used by the
# Kubernetes integration tests (internal/k8stest) into
# $CACHE/bin/kube-apiserver, once. Idempotent: does nothing when the binary is
# present and was built from the version pinned in tools/kube-apiserver/go.mod.
# The build takes 10-25 minutes cold on two cores (24 min measured while other builds ran) and needs only the Go module
# proxy. Prints the binary's path on success.
#
# etcd is not built here: the tests take it from Debian (`apt-get install
# etcd-server`) or from $VOLDELTA_ETCD / $PATH.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
go=${GO:-go}
cache=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/voldelta}
bin="$cache/bin/kube-apiserver"
stamp="$bin.version"

version=$(awk '{ for (i = 1; i < NF; i++) if ($i == "k8s.io/kubernetes" && $(i+1) ~ /^v/) { print $(i+1); exit } }' "$root/tools/kube-apiserver/go.mod")
if [ -z "$version" ]; then
  echo "ensure-kube-apiserver: no k8s.io/kubernetes requirement in tools/kube-apiserver/go.mod" >&2
  exit 1
fi

if [ -x "$bin" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$version" ]; then
  echo "ensure-kube-apiserver: $bin is up to date ($version)" >&2
  echo "$bin"
  exit 0
fi

major=${version#v}; major=${major%%.*}
minor=${version#v"$major".}; minor=${minor%%.*}

mkdir -p "$cache/bin"
echo "ensure-kube-apiserver: building kube-apiserver $version into $bin (takes 10-25 minutes)..." >&2
start=$(date +%s)
tmp="$bin.tmp.$$"
trap 'rm -f "$tmp"' EXIT
(cd "$root/tools/kube-apiserver" && CGO_ENABLED=0 nice -n 19 "$go" build -trimpath \
  -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=$major -X k8s.io/component-base/version.gitMinor=$minor" \
  -o "$tmp" k8s.io/kubernetes/cmd/kube-apiserver)
mv -f "$tmp" "$bin"
echo "$version" > "$stamp"
echo "ensure-kube-apiserver: built in $(( $(date +%s) - start ))s" >&2
echo "$bin"
