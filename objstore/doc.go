// Package objstore keeps voldelta chunks and manifests in an S3-compatible
// object store, content-addressed and deduplicated, so that a target can be
// hydrated in place from the store when no direct connection exists.
//
// # Layout
//
// Under s3://BUCKET/PREFIX:
//
//	chunks/<2 hex>/<64 hex>          one object per distinct chunk, named by its BLAKE3 ID;
//	                                 1 header byte (0 raw, 1 zstd) then the bytes;
//	                                 metadata x-amz-meta-voldelta-chunk:
//	                                 "v1 <codec> <raw length> <object length> <MD5 hex>"
//	manifests/<volume>/<20 digits>   chunk.Manifest.MarshalBinary of one generation;
//	                                 metadata x-amz-meta-voldelta-image: the identity of
//	                                 the image it was pushed from (PushOptions.Image),
//	                                 bytes outside printable ASCII and '%' as %XX;
//	                                 absent if none (and before voldelta recorded it)
//	trash/manifests/<volume>/<gen>   manifests gc removed, kept for the grace period
//	gc/started                       written by gc to read the server's clock
//
// A chunk object is the same for every volume and generation that holds the
// chunk, so it is stored once. All-zero chunks are never stored. A manifest
// is written last: a generation is visible only when all its chunks are.
//
// # Push
//
//	t0 = now
//	bases = the latest manifest of this volume and of every other volume
//	known = the chunk IDs the bases reference (never a listing of chunks/)
//	plan the scan: with Hints, this volume's latest base (already read) is
//	    the scan's Previous and Hints.Changed its Changed, if both were
//	    chunked alike and the hints' BaseImage is "" or the base's image;
//	    otherwise (or hints unavailable, or FullScan) read everything
//	scan the source into a manifest m; while it scans, upload every distinct
//	    chunk of m not in known (re-hashed after reading), zstd-compressed
//	    when that pays, Parallel at a time, retried on transient errors
//	if now - t0 > Grace/2: refresh (re-read the bases, t0 = now, and "touch"
//	    every chunk of m they do not reference with a server-side self-copy,
//	    re-uploading any that is gone)
//	confirm: HEAD every base manifest; chunks reused from a base that is gone,
//	    and not referenced by a surviving base, are confirmed with HEAD requests
//	    in batches (and uploaded if missing or damaged); ConfirmAll HEADs every
//	    reused chunk, VerifyChunks downloads and re-hashes every reused chunk
//	write manifests/<volume>/<latest+1> with If-None-Match: * (a concurrent
//	    push of the same volume that took the number makes this one take the next),
//	    refusing to write it after Grace since t0
//
// "Known" chunks are therefore never checked one by one on the hot path: a
// chunk is trusted because a manifest that was complete when read references
// it, and the gc rule below keeps it. The confirmation costs one request per
// base manifest unless a base disappeared.
//
// # Change hints
//
// A push with PushOptions.Hints (push --base, --changed; see package hint)
// reads only the extents the hints name and takes every other entry from
// the manifest of the volume's latest generation, which it reads as a base
// anyway: a push after a small change reads, as well as uploads, about
// what changed. The hints are used only when that generation's Params are
// the push's and Hints.BaseImage() is "" (the caller vouches for the base)
// or the image recorded with that generation; otherwise the push reads the
// whole source, as it does when the hints fail with hint.ErrUnavailable,
// and PushStats.ScanMode ("incremental", "full") and FullScanReason say
// which and why. Any other hint error fails the push. The store cannot
// check hints: extents a source missed keep the previous generation's
// bytes in the new one (whose root hash is then that of the image the
// hints describe, so a pull cannot tell either), until a FullScan push
// stores the source whole again.
//
// # Damaged chunks and their repair
//
// A chunk object that does not decode to its manifest entry's length or
// whose bytes do not hash to its name fails a pull with a *ChunkError
// (errors.Is ErrCorrupt) naming its key and the repair: push the volume again
// with ConfirmAll (push --confirm-all). Its HEADs compare every reused
// chunk object with the metadata it was uploaded with: present, of the
// recorded size and raw length, and with an ETag equal to the recorded MD5
// where the ETag is an MD5 (unencrypted single-part objects, as voldelta
// writes them); a missing or mismatching one is re-uploaded. A damage no
// HEAD shows (the store's disk changed the bytes under the same ETag) needs
// VerifyChunks, which downloads, decodes and hashes every reused chunk. A
// repair reads the chunk from the source again, checks that it hashes to
// the object's name and that its encoding decodes back to it, and only
// then overwrites the object: a repair never writes wrong bytes (a source
// that changed fails the push with ErrSourceChanged). Objects written
// before voldelta recorded the metadata count as damaged for ConfirmAll and
// are re-uploaded once. A refresh's self-copy keeps the metadata.
//
// # Garbage collection and why it is safe against a concurrent push
//
//	T0 = LastModified of gc/started, written now (the server's clock, no skew)
//	for each volume: move manifests beyond the newest Keep to trash/ (copy, delete)
//	referenced = chunks of every manifest in manifests/ (listed after the moves)
//	           + chunks of every manifest in trash/ younger than T0 - Grace
//	delete chunks/ objects not in referenced and last modified before T0 - Grace
//	delete trash/ objects older than T0 - Grace
//
// The rule: gc deletes a chunk only when no manifest references it, no
// manifest that was removed less than Grace ago references it, and the
// chunk object itself is older than Grace; a push writes its manifest within
// Grace of reading its bases (it refreshes, or refuses, otherwise). Then
// every chunk a pushed manifest references survives: a chunk the push
// uploaded is younger than Grace until the manifest exists; a chunk it
// reused is referenced by a base that either still exists or was removed
// after the push read it, so less than Grace before the manifest was written,
// and gc counts it until the manifest itself references the chunk. A push
// never relies on a chunk object merely existing (an orphan of an
// interrupted push may be deleted at any time). Keep is at least 1, so the
// latest generation of a volume is never removed. Concurrent gc runs are
// safe: one that notices another stops before removing any chunk.
//
// # Pull
//
// Pull reads a manifest (the latest generation, or a given one) and calls
// receiver.ApplyManifest, which plans exactly like a network round (skip what
// is in place, copy what is elsewhere in the target, fetch the rest),
// journals, verifies the root and commits; an interrupted pull is resumed by
// the next one, which fetches only what is still missing. Each fetch GETs a
// chunk object, checks its size before allocating, decompresses it with a
// bounded decoder and checks its hash.
//
// # Errors
//
// Transient failures (HTTP 5xx, 429, timeouts, truncated bodies, and every
// connection-level failure: refused, reset, closed by the server, an EOF
// that minio-go rewrites into "Connection closed by foreign host", as while
// the store restarts) are retried with exponential backoff and jitter
// (Retry). Permanent
// ones fail at once with a sentinel: ErrBadCredentials (AccessDenied,
// InvalidAccessKeyId, SignatureDoesNotMatch, or no credentials at all),
// ErrNoBucket, ErrNotFound.
package objstore
