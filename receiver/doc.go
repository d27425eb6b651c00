// Package receiver applies sync rounds to replica volumes in place: it
// plans each round against what its target already holds, writes only the
// difference, verifies the result and commits a new generation.
//
// Per volume the state directory keeps state.json (committed generation,
// root hash, target fingerprint), the known extents of the target
// (extents-*.bin: the committed manifest, or what recovery proved) and,
// during an apply, a journal. A round:
//
//	prepare:
//	    state committed and fingerprint unchanged → index = committed manifest
//	    state applying (interrupted)              → index = committed extents
//	        − ranges with an intent + entries marked done + intents that read back right
//	    no state / params changed / target changed outside voldelta → index = scan(target)
//	    write state: phase=applying (the target is not current from here on)
//	for each manifest entry e, as the manifest streams in:
//	    e in place per index            → skip
//	    e zero run                      → zero later
//	    e's chunk intact elsewhere      → copy later
//	    otherwise                       → ask the agent (NEED), no round trip per chunk
//	fetched chunk arrives (hash checked against e.ID):
//	    before the plan ran and the index has data → hold it in memory (bounded)
//	    else stage it; every 8 MiB, or when idle: journal intents (one fsync), write in place
//	manifest end (root checked):
//	    journal intents for copies and zero runs
//	    copies in dependency order: a copy whose destination overlaps another's
//	        source waits for it; cycles are broken by reading a source into memory
//	        (bounded) or by fetching that chunk instead; every source is re-hashed
//	        before it is written
//	    write held chunks, zero runs; ask for chunks whose source was lost; NEED_END
//	every 256 MiB: fsync target, journal "done" records
//	all fetched: resize file, fsync target, verify (read back written ranges, or
//	    re-hash everything with --verify full) against the agent's root,
//	    write extents and state (phase=committed, generation+1), RESULT
//
// A target is reported current (ReadStatus) only in phase committed. A
// block device smaller than the source is refused before any write; a file
// grows before the round and shrinks after the copies.
//
// Changes made to a target outside voldelta are detected for files by
// size, mtime and inode; for block devices, which have no reliable mtime,
// by size and a spot check of 16 random chunks. A detected change makes the
// round re-index the target by reading it once.
package receiver
