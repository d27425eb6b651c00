#!/usr/bin/env bash
# make demo: a receiver and an agent on loopback (mutual TLS) sync a
# generated volume, change it, sync the delta, and print what was sent.
set -euo pipefail

bin=${VOLDELTA:-bin/voldelta}
size_mib=${DEMO_SIZE_MIB:-256}
work=$(mktemp -d "${TMPDIR:-/tmp}/voldelta-demo.XXXXXX")
port=${DEMO_PORT:-$(( 20000 + RANDOM % 20000 ))}
recv_pid=
cleanup() {
  [ -n "$recv_pid" ] && kill "$recv_pid" 2>/dev/null && wait "$recv_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Generating a ${size_mib} MiB volume image (random data with an empty region)"
head -c $((size_mib * 3 / 4))M /dev/urandom > "$work/source.img"
truncate -s "${size_mib}M" "$work/source.img"   # the last quarter is a hole: zeros are never sent

say "Creating a private CA and certificates (voldelta certs)"
"$bin" certs --dir "$work/pki" --hosts 127.0.0.1 >/dev/null

say "Starting the receiver on 127.0.0.1:$port"
"$bin" receive --listen "127.0.0.1:$port" --state-dir "$work/state" \
  --target demo="$work/replica.img" \
  --tls-cert "$work/pki/receiver.pem" --tls-key "$work/pki/receiver-key.pem" --tls-ca "$work/pki/ca.pem" \
  --log-level warn &
recv_pid=$!
for _ in $(seq 50); do
  (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
  sleep 0.1
done

send() {
  local name=$1; shift
  "$bin" send --source "$work/source.img" --to "127.0.0.1:$port" --volume demo \
    --tls-cert "$work/pki/agent.pem" --tls-key "$work/pki/agent-key.pem" --tls-ca "$work/pki/ca.pem" \
    --cache-dir "$work/agent-cache" --stats-json "$work/$name.json" "$@"
}

report() {
  python3 - "$work/$1.json" <<'PY' 2>/dev/null || cat "$work/$1.json"
import json, sys
s = json.load(open(sys.argv[1]))
mib = lambda n: f"{n/1048576:8.2f} MiB"
print(f"  source           {mib(s['source_bytes'])}")
print(f"  chunks           {s['chunks_sent']} sent of {s['chunks_total']} ({s['chunks_zero']} all-zero, {s['chunks_skipped']} already in place, {s['chunks_copied']} copied locally)")
print(f"  chunk bytes sent {mib(s['bytes_sent_raw'])} raw")
print(f"  on the wire      {mib(s['wire_bytes'])} (TLS and framing included; manifest {s['manifest_bytes']/1024:.1f} KiB)")
print(f"  time             {s['duration_seconds']:.2f} s (scan {s['scan_seconds']:.2f} s)")
print(f"  scan             {s['scan_mode']}: read {mib(s['bytes_read'])}" + (f" ({s['full_scan_reason']})" if s.get('full_scan_reason') else f", {s['chunks_patched']} chunks sent as their changed bytes"))
print(f"  generation       {s['generation']}, root {s['root_hash'][:16]}…")
PY
}

say "Sync 1: the initial copy"
send first
report first
cmp "$work/source.img" "$work/replica.img" && echo "  replica is byte-identical"

say "Changing the source: append 8 MiB, rewrite 200 scattered 8 KiB pages, zero 16 MiB"
head -c 8M /dev/urandom >> "$work/source.img"
for i in $(seq 200); do
  dd if=/dev/urandom of="$work/source.img" bs=8192 count=1 seek=$(( (i * 7919) % (size_mib * 96) )) conv=notrunc status=none
done
dd if=/dev/zero of="$work/source.img" bs=1M count=16 seek=32 conv=notrunc status=none

say "Sync 2: only the delta"
send second
report second
cmp "$work/source.img" "$work/replica.img" && echo "  replica is byte-identical"

say "Sync 3: with change hints (the writer lists what it changed: 100 pages of 8 KiB)"
: > "$work/changed.txt"
for i in $(seq 100); do
  page=$(( (i * 104729) % (size_mib * 128) ))
  dd if=/dev/urandom of="$work/source.img" bs=8192 count=1 seek=$page conv=notrunc status=none
  echo "$(( page * 8192 )) 8192" >> "$work/changed.txt"
done
sort -n -o "$work/changed.txt" "$work/changed.txt"
send third --changed "$work/changed.txt"
report third
cmp "$work/source.img" "$work/replica.img" && echo "  replica is byte-identical"

say "Receiver status"
"$bin" status --state-dir "$work/state"
