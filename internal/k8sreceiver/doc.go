// Package k8sreceiver is the receiver's Kubernetes mode: VolumeTargets say
// which local volume receives which remote volume and who may write it, or
// which object store it is pulled from.
//
//	Reconcile(VolumeTarget): resolve spec.pvc (or spec.longhornVolume) to a
//	    device on this node; ensure it is attached here (a VolumeAttachment
//	    of its PV to this node, removed with the VolumeTarget); report the
//	    receiver's state of the volume (generation, root, incomplete) in
//	    status, again after every commit and every Refresh
//	Resolve(volume) (receiver.Config.Resolve): the VolumeTarget whose
//	    spec.remoteVolume is volume → its device, if attached to this node
//	Authorize(volume, identity) (receiver.Config.Authorize): the client
//	    certificate must carry a name in spec.allowedIdentities
//	OnCommit (receiver.Config.OnCommit): metrics, and a status refresh
//
// Groups (receiver.Config.Groups; spec.group of VolumeSyncs, HELLO's group
// trailer): the receiver's state records the group of the round that
// committed each generation, and Reconcile reports it (status.group,
// groupGeneration) and promotes:
//
//	Reconcile(vt):
//	    if spec.rearm != status.lastRearm: unpromote vt; lastRearm = spec.rearm
//	    if vt is promoted: report its state, do not attach; done
//	    ... (as above)
//	    if vt's last commit is a Promote round of group G, current, and
//	       not the generation promoted already:
//	        M = targets whose last commit is such a round of G
//	            (this receiver's state; else their status)
//	        if |M| == G.members and all agree on members:
//	            for m in M: refuse rounds to m (Resolve: ErrPromoted,
//	                ERROR 15); annotate m's PVC (migration, generation,
//	                root-hash); delete the VolumeAttachments made for m;
//	                status.promoted, condition Promoted, Event
//
// No partial promotion: a member that has not committed its Promote round
// (failed, interrupted, incomplete) keeps every member unpromoted.
//
// A VolumeTarget with spec.store is fed by an object store instead: every
// poll interval its reconcile lists the remote volume's generations there
// and, if the target does not hold the latest, pulls it in place
// (objstore Pull: skip, copy locally, download the rest, verify, commit);
// Authorize refuses agents for it. Pulls run inside the reconcile, so
// Options.Concurrency bounds the targets pulled at once.
package k8sreceiver
