// Package migration is the Migration controller: it drives a warm
// migration of an application's volumes through one VolumeSync per PVC,
// and the cutover through the application's Deployments and StatefulSets.
//
// A Migration goes through named phases; each has one function that looks
// at the world and returns the next phase (or the same one and when to look
// again):
//
//	Pending          resolve spec.volumes (pvcs ∪ selector; a missing PVC
//	                 is waited for); create VolumeSync <migration>-<pvc> per
//	                 PVC, owned by the Migration, trigger <migration>-precopy-1
//	Precopying       a round is done when every VolumeSync committed it
//	                 (status.lastManualTrigger == the round's trigger, Ready);
//	                 record it (history ≤ 10, lastDeltaBytes,
//	                 predictedDowntime); converged (bytes or predicted time
//	                 under the threshold) or maxRounds → ReadyForCutover;
//	                 else the next trigger after precopy.interval
//	ReadyForCutover  Auto (and converged) → Quiescing; Manual → Quiescing
//	                 once spec.cutoverRequested or spec.cutoverAt ≤ now;
//	                 meanwhile converged rounds go on at the interval
//	Quiescing        record every workload's spec.replicas in status and
//	                 persist it, then scale each to 0; wait until
//	                 status.replicas is 0 and no pod matches its selector;
//	                 after spec.quiesce.timeout → Failed
//	FinalSync        set trigger <migration>-final on every VolumeSync; wait
//	                 until every one committed it (a Degraded one is left to
//	                 the agent's retries while the source stays quiesced;
//	                 a pod of a quiesced workload appearing → Failed)
//	Committing       record each volume's generation and root hash, the
//	                 commit time and the measured downtime → Completed
//	Failed, Aborted  (spec.abort, from any phase before Completed): the
//	                 workloads are scaled back to their recorded counts and
//	                 the VolumeSyncs paused
//
// From Quiescing until the migration ends it carries a finalizer: deleted
// meanwhile, it scales the workloads back before it goes.
//
// spec.quiesce.freeze (freeze.go): in Quiescing, once the pods are gone
// and no round of a listed volume runs, spec.freeze is set on their
// VolumeSyncs and the final round starts only when every one reports
// Frozen; in FinalSync spec.freeze is removed as soon as every listed
// volume's final snapshot has status.creationTime (finalSnapshotsCut). A
// failed freeze, or a thaw before the cut, fails the migration; unwinding,
// completing and deleting it remove every spec.freeze.
//
// Why the final round is consistent: the agent records
// spec.trigger.manual when it takes a round's snapshot
// (status.pendingManualTrigger) and reports it as status.lastManualTrigger
// only when that round commits. The final trigger is set only after the
// workloads' pods are gone, so a VolumeSync whose lastManualTrigger is the
// final trigger committed a snapshot taken after the application stopped,
// whatever round was running when the cutover began.
//
// One Reconcile runs phase functions until one waits, persisting the
// status after every transition with an optimistic lock, so that a status
// read before another write (a stale cache) can never overwrite it: the
// replica counts recorded before scaling are never lost.
package migration
