// Package receiver applies sync rounds to replica volumes in place: it
// plans each round against what its target already holds, writes only the
// difference, verifies the result and commits a new generation.
//
// Per volume the state directory keeps state.json (committed generation,
// root hash, size, the image identity its HELLO named, target
// fingerprint), the known extents of the target
// (extents-*.bin: the committed manifest, or what recovery proved) and,
// during an apply, a journal. A round:
//
//	prepare:
//	    state.json checked (checksum); damaged or lost → refuse (ErrStateCorrupt)
//	    target claimed by another volume → refuse (ErrTargetClaimed)
//	    state committed, fingerprint vouches       → index = committed manifest
//	    state committed, fingerprint cannot tell   → index = committed manifest, read back
//	        (block device after a reboot, or without readable write counters)
//	    state applying (interrupted), its journal intact → index = committed extents
//	        − ranges with an intent + entries marked done + intents that read back right; read back
//	    no state / params changed / changed outside voldelta / journal lost or
//	        damaged / a verification or scrub failed → index = scan(target)
//	    new journal (nonce) and state phase=applying (the target is not current from here on)
//	    base = the index, if it is the committed manifest (state committed, no rescan,
//	        same params) and a root rebuilt over it is the committed root; else none
//	WELCOME: committed generation, root, size, image; HasBase = there is a base
//	BASE_GET (optional, once, before any manifest frame; root = the base's):
//	    the base in MANIFEST frames of ≤ 2048 entries, MANIFEST_END (count, root)
//	for each manifest entry e, as the manifest streams in (MANIFEST frames, or
//	MANIFEST_COPY runs of the base, contiguous with what came before, counted
//	toward the manifest limit):
//	    e in place per index            → skip
//	    e zero run                      → zero later
//	    e's chunk intact elsewhere      → copy later
//	    otherwise                       → ask the agent (NEED), no round trip per chunk
//	fetched chunk arrives (hash checked against e.ID):
//	    before the plan ran and the index has data → hold it in memory (bounded)
//	    else stage it; every 8 MiB, or when idle: journal intents (one fsync), write in place
//	manifest end (root checked: this is what makes a MANIFEST_COPY delta safe):
//	    grow a file target to the source's size
//	    read back: every skipped entry is read and hashed (resumes, --verify
//	        full, fingerprints that cannot vouch); a mismatch is fetched or zeroed instead
//	    journal intents for copies and zero runs; reserve (fallocate) every range still to write
//	    copies in dependency order: a copy whose destination overlaps another's
//	        source waits for it; cycles are broken by reading a source into memory
//	        (bounded) or by fetching that chunk instead; every source is re-hashed
//	        before it is written
//	    write held chunks, zero runs; ask for chunks whose source was lost; NEED_END
//	every 256 MiB: fsync target, journal "done" records
//	all fetched: shrink a file, fsync target, check it is still the file or
//	    device it opened, read back every range written this round; a mismatch
//	    commits nothing and marks the index for a rescan (the next round repairs);
//	    write extents and state (phase=committed, generation+1, size, image, group, fingerprint), RESULT
//
// A HELLO's group (transport.Hello.Group) is recorded with the generation
// its round commits (State.Group, VolumeStatus.Group); promotion is
// Kubernetes mode's (package k8sreceiver, Config.Groups): without
// Config.Groups a group with Promote is refused (ErrGroup, ERROR 16), and
// Config.Resolve refuses a promoted target with ErrPromoted (ERROR 15).
//
// A target is reported current (ReadStatus) only in phase committed, with
// no rescan pending, and while its fingerprint still vouches for it: for a
// file its size, mtime, ctime and inode (ctime cannot be set back from user
// space); for a block device its size and the kernel's write and discard
// counters of that device in the same boot. A block device smaller than
// the source is refused before any write, and is opened exclusively, so a
// mounted replica is refused and cannot be mounted during a round. Space
// errors (ENOSPC, EDQUOT) are ErrTargetFull.
//
// What no fingerprint sees (writes that bypass the device, bit rot, a
// reboot) is found by Scrub, which reads the whole target.
package receiver
