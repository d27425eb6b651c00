#!/usr/bin/env bash
# ensure-etcd.sh: make sure an etcd server (3.4 or later) is available for
# the Kubernetes integration tests: $VOLDELTA_ETCD, etcd on $PATH, or
# Debian's etcd-server package, installed here when running as root.
# Prints the binary's path.
set -euo pipefail

if [ -n "${VOLDELTA_ETCD:-}" ] && [ -x "$VOLDELTA_ETCD" ]; then
  echo "$VOLDELTA_ETCD"
  exit 0
fi
if command -v etcd >/dev/null 2>&1; then
  command -v etcd
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "ensure-etcd: installing Debian's etcd-server..." >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >&2
  command -v etcd
  exit 0
fi
echo "ensure-etcd: no etcd: install it (apt-get install etcd-server) or set VOLDELTA_ETCD" >&2
exit 1
