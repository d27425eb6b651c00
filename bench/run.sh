#!/usr/bin/env bash
# bench/run.sh: install what the benchmark needs (idempotently), build it,
# and run it. Arguments go to the harness (bench -h lists them), e.g.
#   bench/run.sh -scale quick
#   bench/run.sh -scale default -out bench/results/default
#   bench/run.sh scale -sizes "1 4 16"     (make bench-scale; bench scale -h)
#   bench/run.sh warm                       (make bench-warm; bench warm -h)
# Needs root (network namespaces, loop devices, mounts). The harness cleans
# up its namespaces, mounts, loop devices and processes on success, failure
# and Ctrl-C; a run that was killed outright is cleaned up by the next.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
go=${GO:-go}

if [ "$(id -u)" != 0 ]; then
  echo "bench: needs root (network namespaces, loop devices, mounts): run it as root or with sudo" >&2
  exit 1
fi

# Debian packages: the workload's database, the rsync reference, the chart,
# and the system tools the harness drives (GNU time measures every process).
# The scale mode needs no database but XFS (reflinks).
mode=()
pkgs=(mariadb-server mariadb-client rsync gnuplot-nox e2fsprogs iproute2 util-linux mount time)
if [ "${1:-}" = scale ]; then
  mode=(scale)
  shift
  pkgs=(rsync gnuplot-nox xfsprogs iproute2 util-linux mount time coreutils)
elif [ "${1:-}" = warm ]; then
  # The warm migration: MariaDB on an ext4 whose image is on an XFS with
  # reflinks (the snapshots).
  mode=(warm)
  shift
  pkgs+=(xfsprogs coreutils)
fi
missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # mariadb-server's postinst may fail to start a service where there is no
  # init system; the benchmark runs its own mariadbd.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The pinned restic client and MinIO server, built once from the Go module
# proxy and cached.
restic=$(GO=$go ./scripts/ensure-restic.sh)
minio=$(GO=$go ./scripts/ensure-minio.sh)

# The scale mode's "no worse than before" row: voldelta from before the
# change-hint work, built once from this repository's history.
if [ "${mode[*]}" = scale ] && [ -z "${VOLDELTA_BEFORE:-}" ]; then
  if before=$(GO=$go ./scripts/ensure-voldelta-before.sh); then
    export VOLDELTA_BEFORE=$before
  else
    echo "bench: no voldelta from before the change-hint work: the scale run has no voldelta-before row" >&2
  fi
fi

"${MAKE:-make}" --no-print-directory build >/dev/null
"$go" build -o bin/voldelta-bench ./bench

exec bin/voldelta-bench "${mode[@]}" -voldelta bin/voldelta -restic "$restic" -minio "$minio" "$@"
