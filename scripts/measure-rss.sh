#!/usr/bin/env bash
# Peak RSS of both sides for a sync of a SIZE (default 4G) random volume on
# loopback, then of a 64 MiB-append delta. Usage: scripts/measure-rss.sh [SIZE]
set -euo pipefail
size=${1:-4G}
bin=$(realpath "${VOLDELTA:-bin/voldelta}")
work=$(mktemp -d "${TMPDIR:-/tmp}/voldelta-rss.XXXXXX")
port=$(( 20000 + RANDOM % 20000 ))
trap 'pkill -INT -f "listen 127.0.0.1:$port" 2>/dev/null || true; sleep 1; rm -rf "$work"' EXIT
cd "$work"
head -c "$size" /dev/urandom > src.img
/usr/bin/time -v "$bin" receive --listen 127.0.0.1:$port --target v="$work/dst.img" --state-dir state --insecure --log-level warn 2> recv.time &
sleep 0.5
/usr/bin/time -v "$bin" send --source src.img --to 127.0.0.1:$port --volume v --insecure --stats-json full.json 2> send-full.time
head -c 64M /dev/urandom >> src.img
/usr/bin/time -v "$bin" send --source src.img --to 127.0.0.1:$port --volume v --insecure --stats-json delta.json 2> send-delta.time
pkill -INT -f "listen 127.0.0.1:$port"; sleep 1
cmp src.img dst.img && echo "target identical"
rss() { awk -F': ' '/Maximum resident/ {printf "%.1f MiB", $2/1024}' "$1"; }
echo "full sync of $size: agent peak RSS $(rss send-full.time)"
echo "64 MiB delta:       agent peak RSS $(rss send-delta.time)"
echo "receiver (both rounds): peak RSS $(rss recv.time)"
