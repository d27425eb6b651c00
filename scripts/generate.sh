#!/usr/bin/env bash
# generate.sh [OUTDIR]: run controller-gen on api/...: deepcopy methods into
# api/v1alpha1/zz_generated.deepcopy.go and CRD manifests into deploy/crds.
# With OUTDIR, write both into OUTDIR/object and OUTDIR/crds instead (the
# staleness test in api/v1alpha1 compares those with the committed files).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cg=$("$root/scripts/ensure-controller-gen.sh")
cd "$root"
if [ $# -ge 1 ]; then
  out=$1
  mkdir -p "$out/object" "$out/crds"
  "$cg" object paths=./api/... output:object:dir="$out/object"
  "$cg" crd:crdVersions=v1 paths=./api/... output:crd:dir="$out/crds"
else
  "$cg" object paths=./api/...
  "$cg" crd:crdVersions=v1 paths=./api/... output:crd:artifacts:config=deploy/crds
  # The Helm chart installs the same CRDs (deploy/chart_test.go checks it).
  rm -f charts/voldelta/crds/*.yaml
  cp deploy/crds/voldelta.io_*.yaml charts/voldelta/crds/
fi
