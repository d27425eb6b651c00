#!/usr/bin/env bash
# ensure-xfsprogs.sh: make sure mkfs.xfs (Debian's xfsprogs) is available for
# the reflink change-hint tests (hint/), installed here when running as root.
# Prints the binary's path.
set -euo pipefail

if command -v mkfs.xfs >/dev/null 2>&1; then
  command -v mkfs.xfs
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "ensure-xfsprogs: installing Debian's xfsprogs..." >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xfsprogs >&2
  command -v mkfs.xfs
  exit 0
fi
echo "ensure-xfsprogs: no mkfs.xfs: install it (apt-get install xfsprogs)" >&2
exit 1
