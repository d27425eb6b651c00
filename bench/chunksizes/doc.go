// Command chunksizes measures how the chunk sizes of package chunk trade the
// bytes a sync sends against the size of the manifest and the speed of the
// scan, to pick chunk.DefaultParams from numbers (see docs/chunk-sizes.md).
//
// For every candidate parameter set (min/avg/max chunk size; 64 MiB segments
// and the default polynomial for all) it runs real syncs with the engine: a
// receiver is started in-process on loopback (plain TCP, no TLS), the base
// volume is synced once (not measured), and then for every scenario the
// change is applied to the source, the source is synced (measured: wire
// bytes, chunk bytes sent, chunks sent, manifest bytes and entries), the
// target is compared byte for byte with the source (the program exits with
// an error if they differ), and source and target are put back to the base.
//
// The base volume is -size bytes from a ChaCha8 PRNG seeded with -seed
// (-data random), or a compressible mix of random bytes, words and zero
// regions (-data mixed). The scenarios, identical for every parameter set:
//
//	append  1.4 % of the volume appended (1 GB appended to 70 GB)
//	pages   -pages distinct random 8 KiB-aligned pages rewritten (database-like)
//	insert  1 MiB inserted near the middle, shifting everything after it
//	zero    16 MiB overwritten with zeros (e.g. a freed and trimmed region)
//
// Scan throughput is measured separately with chunk.ScanManifest over the
// base file from the page cache, best of -scan-runs, with one worker and
// with all cores.
//
// Usage:
//
//	go run ./bench/chunksizes -size 1GiB -out docs/table.md -json results.json
package main
