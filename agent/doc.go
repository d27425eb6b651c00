// Package agent runs sync rounds on the source side: it chunks a volume,
// streams the manifest to a receiver, and sends the chunks the receiver
// asks for.
//
//	Sync(source, receiver):
//	    dial (TLS 1.3, mutual auth) → HELLO{volume, size, chunk params} → WELCOME
//	    open N data streams
//	    scan the source on all cores; stream MANIFEST batches as segments finish
//	    in parallel, for each NEED range from the receiver: read the chunks from
//	        the source (io.ReaderAt), compress with zstd when it pays, send CHUNK
//	        frames over the N data streams (no round trip per chunk)
//	    MANIFEST_END{root} … NEED_END … RESULT{generation, root}
//	    succeed only if the receiver's committed root equals the source's
//
// SyncOn runs the same round over a session the caller dialled and keeps
// open, so that several rounds (of a group, asking with Group.Share) run
// on one session at once and share its bandwidth limit
// (transport/spec.md, section 7.1); Options.OnWelcome learns how many
// rounds the receiver takes on it.
//
// The source must not change while it is read: sync from a snapshot (the
// Kubernetes integration takes one per round). A chunk read twice with
// different contents makes the receiver end the round with a "source
// changed" error instead of committing a torn image.
package agent
