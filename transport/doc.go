// Package transport carries voldelta's sync protocol between an agent and a
// receiver over one TCP connection, secured with TLS 1.3 (both ends present
// certificates from the same CA; plain TCP only with an explicit --insecure)
// and multiplexed into streams with hashicorp/yamux. It knows frames,
// messages, codecs and sessions; what the messages mean to a volume is the
// business of the agent and receiver packages. The wire format is specified
// byte by byte in spec.md.
//
// A round (one sync of one volume) has one control stream, opened first,
// and Config.Streams data streams opened after it. A session carries one
// round, or, once the receiver allowed it in WELCOME (rounds trailer),
// several rounds of different volumes at once, each data stream naming its
// round's control stream in DATA_OPEN (spec.md, section 7.1); rounds on one
// session share its bandwidth limit:
//
//	control stream (agent ⇄ receiver):
//	    agent → HELLO (magic, version, volume, size, chunk params, streams, image)
//	    receiver → WELCOME (last generation, root, target state, its size
//	              and image, whether the receiver holds its manifest: HasBase)
//	              or ERROR (e.g. code 2 naming both versions) and the end
//	    optionally, with HasBase: agent → BASE_GET (root);
//	        receiver → the committed manifest as MANIFEST frames, MANIFEST_END
//	    concurrently:
//	        agent → MANIFEST batches of entries, in order, or MANIFEST_COPY
//	                runs of the committed manifest's entries (with HasBase),
//	                then MANIFEST_END
//	        receiver → NEED index ranges as it classifies entries, then NEED_END
//	    receiver → RESULT once the target is written and verified,
//	               or ERROR from either end at any point
//
//	data stream i (agent → receiver):
//	    agent → DATA_OPEN(i[, control stream]), then CHUNK frames for needed indexes,
//	            then closes its write side
//
// Nothing is acknowledged per chunk: the agent streams chunks as NEED
// ranges arrive and yamux's per-stream windows (Config.StreamWindow,
// 8 MiB by default) are the only back-pressure. yamux re-credits a window
// only after half of it was consumed, so a data stream moves about
// window/(2·RTT) bytes per second; several streams fill a long path.
//
// Every frame is a 6-byte header (type, flags, length) and a payload whose
// length is checked against Config.MaxFrameSize before anything is
// allocated (FrameReader). Messages are plain values converted at this
// boundary (Message, Decode); a CHUNK carries zstd only when that saves
// more than 1/32 of the bytes (Compressor). Writes can be paced to a
// bandwidth limit (Config.BandwidthLimit, ParseRate), and each Session
// counts the bytes it put on and took off the wire, TLS and yamux included.
package transport
