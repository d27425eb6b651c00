// Package chunk cuts a volume into content-defined chunks and describes it
// as a manifest whose root hash proves what the volume holds.
//
// A volume is read as a sequence of fixed segments (Params.SegmentSize,
// 64 MiB by default). Each segment is cut independently with Rabin
// content-defined chunking (github.com/restic/chunker) between MinSize and
// MaxSize bytes, aiming at AvgSize, so segments are chunked on all cores
// while a change only moves the boundaries around it. Each chunk is named by
// the BLAKE3-256 hash of its bytes (ID). All-zero chunks get no ID: adjacent
// ones are coalesced into one zero run, which is never sent or stored.
//
//	Scan(volume):
//	    for each segment s, on one of W workers, at most 2W in flight:
//	        for each chunk c cut from s:
//	            if c is all zeros: entry = zero run(c.offset, c.length)
//	            else:              entry = (c.offset, c.length, BLAKE3(c))
//	    emit entries in offset order, merging adjacent zero runs
//
// A Manifest records the algorithm name, the parameters and the polynomial
// (Params), the volume size and the entries. Its root hash is BLAKE3 over a
// domain string, the encoded Params, the size and every encoded entry
// (Builder), so two ends that agree on the root hold the same bytes. Two
// manifests are only compared when their Params are equal.
//
// The default sizes (16 KiB / 64 KiB / 256 KiB, 64 MiB segments) were chosen
// from the measurements in docs/chunk-sizes.md: scattered 8 KiB page
// rewrites, the pattern of databases, cost 3-4× fewer bytes than with
// 256 KiB chunks, appends cost the same, scan speed does not depend on the
// size, and the larger manifest (about 0.6 MB per GiB) streams while the
// volume is scanned.
package chunk
