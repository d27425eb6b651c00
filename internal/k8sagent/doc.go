// Package k8sagent is the node agent's VolumeSync reconciler: it runs the
// sync rounds of the VolumeSyncs whose source volume is attached to its own
// node and reports them in their status.
//
//	Reconcile(VolumeSync):
//	    resolve spec.sourcePVC → PV → device; attached node ≠ this node → ignore
//	    paused → phase Paused, stop
//	    not due (no pending round, no manual bump, interval not elapsed)
//	        → RequeueAfter(nextSyncTime − now)
//	    no pending snapshot → status.pendingSnapshot = <name>-<time>, Syncing
//	    EnsureSnapshot → not ready: RequeueAfter (or a watch event)
//	    open its image (csi.ImageSource) → agent.Sync with the TLS Secret's
//	        certificate to spec.destination.address (a round of spec.group:
//	        agent.SyncOn over the group's session to that receiver, shared
//	        with the group's other rounds, pool.go), or objstore Push with
//	        the credentials Secret to spec.destination.store (the round
//	        becomes the store's next generation of the volume); either way,
//	        if the last round's manifest is remembered and the image source
//	        tracks changes (csi.ChangeTracker: Longhorn's chain), that
//	        manifest and the extents changed since its snapshot, so that
//	        unchanged segments are not read
//	    failed → Degraded (reason), keep the snapshot, retry with backoff
//	    committed → status: figures, Ready; the snapshot becomes the base;
//	        older snapshots of this VolumeSync are deleted
//	        → RequeueAfter(interval)
//
// Only the agent on the volume's node writes a VolumeSync's status. The
// VolumeSnapshots it creates carry the labels voldelta.io/volumesync and
// voldelta.io/node, and its snapshot watch is scoped to its node by label.
// VolumeAttachments and Longhorn Volumes offer no server-side selector by
// node, so the agent watches them all and filters events by node (old or
// new) before they reach the queue.
//
// A second controller, ReconcileFreeze (freeze.go), acts on spec.freeze
// alone and writes only status.freeze: it freezes the filesystem of the
// volume on every mount of it by a pod of this node (found in
// /proc/self/mountinfo under Options.KubeletDir, one FIFREEZE per device),
// and thaws it when spec.freeze goes or its token changes, when its
// timeout passed, or when the VolumeSync is deleted. It is separate from
// Reconcile, which holds a VolumeSync for as long as a round sends, so
// that a thaw never waits for a round.
package k8sagent
