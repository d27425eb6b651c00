// Command bench is the project's yardstick: it replays the workload-mobility
// study's migration scenarios (one large file, many 10 MiB files, a MariaDB
// database) over an emulated 100 Mbit/s, 20 ms RTT WAN and measures voldelta
// against restic (+MinIO at the destination, the study's topology) and rsync
// on the same link in the same run, and voldelta through the same MinIO
// (push at the source, pull at the destination).
//
// Topology (root only; everything is created and removed by the run):
//
//	netns vdbench-src                         netns vdbench-dst
//	┌──────────────────────┐  veth, tbf      ┌───────────────────────────────┐
//	│ voldelta send        │  100 Mbit/s     │ delay proxy (10 ms each way)  │
//	│ voldelta push        │ ══════════════> │  :17300 → voldelta receive    │
//	│ restic backup        │  each direction │  :19000 → MinIO               │
//	│ rsync client         │                 │  :18873 → rsync --daemon      │
//	│ mariadbd (workload)  │                 │  :15201 → link probe sink     │
//	│ link probe client    │                 │ restic restore, voldelta pull │
//	└──────────────────────┘                 │  (local MinIO)                │
//	 source loop device + ext4               └───────────────────────────────┘
//	                                          destination loop devices
//
// Per scenario: an initial round of every tool, the scenario's delta, a delta
// round of every tool, verification of every target, and the figures (wall
// time, bytes read off the veth counters, CPU seconds and peak RSS per side
// from GNU time) written to results.json, results.md and results.png.
//
// The harness re-executes itself inside the namespaces for its helpers
// (delay proxy, link probe, port wait, bucket creation); see helpers.go.
//
// Usage: see bench/README.md (`make bench`, `make bench-quick`).
package main
