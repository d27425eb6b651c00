package v1alpha1

import (
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MigrationSpec asks for a warm migration of an application's volumes:
// pre-copy rounds while the application runs, until the rounds converge,
// then one cutover: the application's workloads are scaled to zero, a
// final round of every volume runs from snapshots taken after they
// stopped, and the destination is promoted once every volume committed.
//
// +kubebuilder:validation:XValidation:rule="!has(self.destination.volumeName)",message="destination.volumeName is per volume: a Migration names each volume <namespace>-<pvc> (see status.volumes)"
type MigrationSpec struct {
	// Volumes are the PersistentVolumeClaims to move, in the Migration's
	// namespace.
	Volumes MigrationVolumes `json:"volumes"`

	// Destination is where every volume goes (as a VolumeSync's; without
	// volumeName: each volume is <namespace>-<pvc> there).
	Destination Destination `json:"destination"`

	// Quiesce says how the application is stopped for the cutover.
	// +optional
	Quiesce Quiesce `json:"quiesce,omitempty"`

	// Precopy says how often pre-copy rounds run and when they have
	// converged.
	// +optional
	Precopy Precopy `json:"precopy,omitempty"`

	// Cutover says when the cutover starts once the pre-copy converged.
	// +optional
	Cutover CutoverPolicy `json:"cutover,omitempty"`

	// CutoverRequested starts the cutover (Manual mode) as soon as the
	// pre-copy is ready.
	// +optional
	CutoverRequested bool `json:"cutoverRequested,omitempty"`

	// CutoverAt starts the cutover (Manual mode) at this time, once the
	// pre-copy is ready.
	// +optional
	CutoverAt *metav1.Time `json:"cutoverAt,omitempty"`

	// Abort stops the migration: before the destination commits the
	// final group, the workloads are scaled back to their replica counts
	// and the destination stays unpromoted. After the commit it is
	// ignored (the migration completed).
	// +optional
	Abort bool `json:"abort,omitempty"`

	// VolumeSnapshotClassName is the VolumeSnapshotClass of every round's
	// snapshots (as a VolumeSync's).
	// +optional
	VolumeSnapshotClassName string `json:"volumeSnapshotClassName,omitempty"`

	// VolumeGroupSnapshotClassName asks for the final snapshots to be one
	// VolumeGroupSnapshot of this class (groupsnapshot.storage.k8s.io/v1):
	// if the API is not served, the class does not exist or its driver is
	// not the volumes', the cutover fails before anything is scaled.
	// Empty: a group snapshot is taken if the API is served and one
	// VolumeGroupSnapshotClass is marked default
	// (groupsnapshot.storage.kubernetes.io/is-default-class) for the
	// volumes' CSI driver; otherwise one VolumeSnapshot per volume.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	VolumeGroupSnapshotClassName string `json:"volumeGroupSnapshotClassName,omitempty"`

	// BandwidthLimit caps each volume's rounds (as a VolumeSync's:
	// "100Mbit", "12MiB"). Empty: unlimited.
	// +optional
	// +kubebuilder:validation:MaxLength=32
	BandwidthLimit string `json:"bandwidthLimit,omitempty"`
}

// MigrationVolumes names the PVCs of a Migration: a list, a label
// selector, or both (their union).
//
// +kubebuilder:validation:XValidation:rule="has(self.pvcs) || has(self.selector)",message="name the volumes: pvcs, selector or both"
type MigrationVolumes struct {
	// PVCs are PersistentVolumeClaim names.
	// +optional
	// +kubebuilder:validation:MaxItems=64
	// +listType=set
	PVCs []string `json:"pvcs,omitempty"`

	// Selector selects PersistentVolumeClaims by label.
	// +optional
	Selector *metav1.LabelSelector `json:"selector,omitempty"`
}

// WorkloadKind is a kind of workload a Migration quiesces.
// +kubebuilder:validation:Enum=Deployment;StatefulSet
type WorkloadKind string

// Workload kinds.
const (
	KindDeployment  WorkloadKind = "Deployment"
	KindStatefulSet WorkloadKind = "StatefulSet"
)

// WorkloadRef names a Deployment or a StatefulSet in the Migration's
// namespace.
type WorkloadRef struct {
	Kind WorkloadKind `json:"kind"`
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
}

// Quiesce stops the application for the cutover.
type Quiesce struct {
	// Workloads are scaled to 0 replicas at the cutover and waited for
	// until their pods are gone; their replica counts are kept in
	// status.workloads and restored on abort.
	// +optional
	// +kubebuilder:validation:MaxItems=32
	Workloads []WorkloadRef `json:"workloads,omitempty"`

	// Timeout is how long the cutover waits for the workloads' pods to
	// be gone (and the filesystems of freeze to be frozen) before the
	// migration fails (and scales them back); default 5m.
	// +optional
	Timeout *metav1.Duration `json:"timeout,omitempty"`

	// Freeze lists PVCs of spec.volumes whose filesystems are frozen
	// (FIFREEZE) at the cutover instead of stopping their application:
	// once the workloads' pods are gone, the agents freeze them, the final
	// snapshots are taken while they are frozen (one consistent cut across
	// them), and they are thawed as soon as every final snapshot has been
	// cut. Writes after the thaw stay at the source: scale the workloads
	// where you can; freeze is for volumes whose application cannot be
	// stopped (docs/migration.md, "Freezing instead of stopping").
	// +optional
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +listType=set
	Freeze []string `json:"freeze,omitempty"`

	// FreezeTimeout is the longest a filesystem of freeze stays frozen:
	// its agent thaws it after that even if the final snapshot was not
	// cut (the migration then fails); default 2m, at most 30m.
	// +optional
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s') && duration(self) <= duration('30m')",message="freezeTimeout: more than 0s, at most 30m"
	FreezeTimeout *metav1.Duration `json:"freezeTimeout,omitempty"`
}

// Precopy configures the pre-copy rounds.
type Precopy struct {
	// Interval between the end of one pre-copy round (every volume
	// committed) and the start of the next; 0 (default): back to back.
	// +optional
	Interval *metav1.Duration `json:"interval,omitempty"`

	// ConvergedBelowBytes: the pre-copy is ready for the cutover when the
	// last round sent fewer chunk bytes than this, all volumes together.
	// Default (neither threshold set): 256Mi.
	// +optional
	ConvergedBelowBytes *resource.Quantity `json:"convergedBelowBytes,omitempty"`

	// ConvergedBelowDuration: the pre-copy is ready when the predicted
	// final round (status.predictedDowntime) is shorter than this. With
	// both thresholds, either suffices.
	// +optional
	ConvergedBelowDuration *metav1.Duration `json:"convergedBelowDuration,omitempty"`

	// MaxRounds stops pre-copying after this many rounds and reports the
	// migration ready even if it did not converge (the cutover then waits
	// for a request, whatever spec.cutover.mode says); default 20.
	// +optional
	// +kubebuilder:validation:Minimum=1
	MaxRounds int32 `json:"maxRounds,omitempty"`
}

// CutoverMode says who starts the cutover.
// +kubebuilder:validation:Enum=Manual;Auto
type CutoverMode string

// Cutover modes.
const (
	// CutoverManual waits for spec.cutoverRequested or spec.cutoverAt.
	CutoverManual CutoverMode = "Manual"
	// CutoverAuto cuts over as soon as the pre-copy converged.
	CutoverAuto CutoverMode = "Auto"
)

// CutoverPolicy configures the cutover.
type CutoverPolicy struct {
	// Mode: Manual (default) or Auto.
	// +optional
	Mode CutoverMode `json:"mode,omitempty"`
}

// MigrationPhase is where a Migration is.
// +kubebuilder:validation:Enum=Pending;Precopying;ReadyForCutover;Quiescing;FinalSync;Committing;Completed;Failed;Aborted
type MigrationPhase string

// Migration phases, in order; Failed and Aborted end it early.
const (
	MigrationPending         MigrationPhase = "Pending"         // volumes being resolved, VolumeSyncs created
	MigrationPrecopying      MigrationPhase = "Precopying"      // pre-copy rounds run
	MigrationReadyForCutover MigrationPhase = "ReadyForCutover" // converged; waiting for the cutover (Manual)
	MigrationQuiescing       MigrationPhase = "Quiescing"       // workloads scaled to 0; waiting for their pods to go
	MigrationFinalSync       MigrationPhase = "FinalSync"       // the final round of every volume runs
	MigrationCommitting      MigrationPhase = "Committing"      // every volume committed; recording the group
	MigrationCompleted       MigrationPhase = "Completed"       // the group committed at the destination
	MigrationFailed          MigrationPhase = "Failed"          // cannot go on; workloads scaled back
	MigrationAborted         MigrationPhase = "Aborted"         // spec.abort; workloads scaled back
)

// Terminal says whether p ends the migration.
func (p MigrationPhase) Terminal() bool {
	return p == MigrationCompleted || p == MigrationFailed || p == MigrationAborted
}

// Condition types of a Migration.
const (
	// ConditionReadyForCutover: the pre-copy converged.
	ConditionReadyForCutover = "ReadyForCutover"
	// ConditionDestinationReady: every volume's final round committed at
	// the destination, from snapshots taken after the workloads stopped.
	ConditionDestinationReady = "DestinationReady"
	// ConditionQuiesced: the workloads are at 0 and their pods gone.
	ConditionQuiesced = "Quiesced"
)

// MigrationStatus is what the controller reports.
type MigrationStatus struct {
	// Phase is where the migration is.
	// +optional
	Phase MigrationPhase `json:"phase,omitempty"`
	// Conditions: ReadyForCutover, Quiesced, DestinationReady.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// ObservedGeneration is the metadata.generation last acted on.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Message says what the migration waits for or why it failed.
	// +optional
	Message string `json:"message,omitempty"`

	// Volumes are the migration's volumes and their VolumeSyncs.
	// +optional
	Volumes []MigrationVolumeStatus `json:"volumes,omitempty"`
	// Workloads are the quiesced workloads and the replica counts they
	// had before the cutover (restored on abort).
	// +optional
	Workloads []WorkloadStatus `json:"workloads,omitempty"`

	// Rounds counts the pre-copy rounds that completed.
	// +optional
	Rounds int32 `json:"rounds,omitempty"`
	// History are the last pre-copy rounds (at most 10, newest last).
	// +optional
	History []PrecopyRound `json:"history,omitempty"`
	// LastDeltaBytes is the chunk bytes the last round sent, all volumes
	// together.
	// +optional
	LastDeltaBytes int64 `json:"lastDeltaBytes,omitempty"`
	// PredictedDowntime is what the cutover is expected to cost: the
	// last round's duration (its volumes run concurrently) plus the
	// quiesce time the workloads needed, if known.
	// +optional
	PredictedDowntime *metav1.Duration `json:"predictedDowntime,omitempty"`

	// PrecopyTrigger is the manual trigger of the current (or, once it
	// is in history, the last) pre-copy round of every volume:
	// <migration>-precopy-<n>.
	// +optional
	PrecopyTrigger string `json:"precopyTrigger,omitempty"`
	// PrecopyStartTime is when PrecopyTrigger was set on the volumes.
	// +optional
	PrecopyStartTime *metav1.MicroTime `json:"precopyStartTime,omitempty"`

	// CutoverStartTime is when quiescing started.
	// +optional
	CutoverStartTime *metav1.MicroTime `json:"cutoverStartTime,omitempty"`
	// QuiescedTime is when the workloads were at 0 and their pods gone.
	// +optional
	QuiescedTime *metav1.MicroTime `json:"quiescedTime,omitempty"`
	// FinalTrigger is the manual trigger of every volume's final round.
	// +optional
	FinalTrigger string `json:"finalTrigger,omitempty"`
	// FinalSyncStartTime is when FinalTrigger was set on the volumes.
	// +optional
	FinalSyncStartTime *metav1.MicroTime `json:"finalSyncStartTime,omitempty"`
	// Group names the group of the final rounds (every VolumeSync's
	// spec.group, with promote): the destination's VolumeTargets report
	// it, and their promotion, in status.group and status.promotedGroup.
	// Empty for a store destination.
	// +optional
	Group string `json:"group,omitempty"`
	// FinalSnapshots says how the final snapshots are taken, decided when
	// the cutover starts (before anything is scaled); the message and an
	// event say why.
	// +optional
	FinalSnapshots FinalSnapshots `json:"finalSnapshots,omitempty"`
	// GroupSnapshot is the VolumeGroupSnapshot of the final snapshots
	// (finalSnapshots Group).
	// +optional
	GroupSnapshot *GroupSnapshotStatus `json:"groupSnapshot,omitempty"`
	// CommitTime is when the group committed (the last volume's final
	// round committed at the destination).
	// +optional
	CommitTime *metav1.MicroTime `json:"commitTime,omitempty"`
	// Downtime is the measured downtime, from the start of quiescing to
	// the group commit, and its parts.
	// +optional
	Downtime *Downtime `json:"downtime,omitempty"`
	// Freeze records the freeze of spec.quiesce.freeze at the cutover.
	// +optional
	Freeze *MigrationFreeze `json:"freeze,omitempty"`
}

// MigrationFreeze is the freeze of a cutover, by the controller's clock
// (each VolumeSync's status.freeze has its agent's times).
type MigrationFreeze struct {
	// Token is every frozen VolumeSync's spec.freeze.token:
	// <namespace>-<migration>-<first 8 of its uid>.
	Token string `json:"token"`
	// RequestTime is when spec.freeze was set on the VolumeSyncs (after
	// the workloads' pods were gone).
	RequestTime metav1.MicroTime `json:"requestTime"`
	// FrozenTime is when every listed volume's agent reported it frozen;
	// the final round was started then.
	// +optional
	FrozenTime *metav1.MicroTime `json:"frozenTime,omitempty"`
	// ThawedTime is when spec.freeze was cleared: every final snapshot was
	// cut, or the migration ended without.
	// +optional
	ThawedTime *metav1.MicroTime `json:"thawedTime,omitempty"`
	// Window is from requestTime to thawedTime: how long the listed
	// filesystems could not be written, as the controller saw it.
	// +optional
	Window *metav1.Duration `json:"window,omitempty"`
}

// FinalSnapshots says how a Migration's final snapshots are taken.
// +kubebuilder:validation:Enum=Group;PerVolume
type FinalSnapshots string

// How the final snapshots are taken.
const (
	// FinalSnapshotsGroup: one VolumeGroupSnapshot of every volume, taken
	// at one point after the workloads stopped; each VolumeSync's final
	// round reads its member (spec.trigger.snapshotName).
	FinalSnapshotsGroup FinalSnapshots = "Group"
	// FinalSnapshotsPerVolume: each agent takes its volume's VolumeSnapshot
	// after the workloads stopped.
	FinalSnapshotsPerVolume FinalSnapshots = "PerVolume"
)

// GroupSnapshotStatus is the VolumeGroupSnapshot of a Migration's final
// snapshots.
type GroupSnapshotStatus struct {
	// Name of the VolumeGroupSnapshot (<migration>-final), in the
	// Migration's namespace, owned by the Migration.
	Name string `json:"name"`
	// ClassName is its VolumeGroupSnapshotClass.
	ClassName string `json:"className"`
	// CreateTime is when the controller created it.
	// +optional
	CreateTime *metav1.MicroTime `json:"createTime,omitempty"`
	// ReadyTime is when the controller saw it readyToUse with a member
	// VolumeSnapshot of every volume.
	// +optional
	ReadyTime *metav1.MicroTime `json:"readyTime,omitempty"`
}

// MigrationVolumeStatus is one volume of a Migration.
type MigrationVolumeStatus struct {
	// PVC is the source PersistentVolumeClaim.
	PVC string `json:"pvc"`
	// VolumeSync is the VolumeSync the migration drives for it.
	VolumeSync string `json:"volumeSync"`
	// RemoteVolume is its name at the destination.
	RemoteVolume string `json:"remoteVolume"`
	// Generation and RootHash are what its final round committed.
	// +optional
	Generation int64 `json:"generation,omitempty"`
	// +optional
	RootHash string `json:"rootHash,omitempty"`
	// FinalSnapshot is its member VolumeSnapshot of the group snapshot,
	// which its final round reads (finalSnapshots Group).
	// +optional
	FinalSnapshot string `json:"finalSnapshot,omitempty"`
}

// WorkloadStatus is a quiesced workload.
type WorkloadStatus struct {
	Kind WorkloadKind `json:"kind"`
	Name string       `json:"name"`
	// Replicas is the count it had before the cutover scaled it to 0.
	Replicas int32 `json:"replicas"`
}

// PrecopyRound is one pre-copy round of every volume.
type PrecopyRound struct {
	// Round counts from 1.
	Round int32 `json:"round"`
	// Trigger is the VolumeSyncs' manual trigger of this round.
	Trigger   string      `json:"trigger"`
	StartTime metav1.Time `json:"startTime"`
	EndTime   metav1.Time `json:"endTime"`
	// SentBytes is the chunk bytes sent, all volumes together.
	SentBytes int64 `json:"sentBytes"`
	// Volumes are the per-volume figures.
	Volumes []RoundVolume `json:"volumes"`
}

// RoundVolume is one volume's part of a round.
type RoundVolume struct {
	PVC string `json:"pvc"`
	// SentBytes is the uncompressed size of the chunks the round sent
	// (what changed, at chunk granularity).
	SentBytes int64 `json:"sentBytes"`
	// WireBytes is what the round wrote to the network.
	WireBytes int64 `json:"wireBytes"`
	// Generation is the generation it committed.
	Generation int64 `json:"generation"`
	// Duration is the volume's round, snapshot included.
	Duration metav1.Duration `json:"duration"`
}

// Downtime is a cutover's measured downtime and where it went.
type Downtime struct {
	// Total is from the start of quiescing to the group commit.
	Total metav1.Duration `json:"total"`
	// Quiesce is the wait for the workloads' pods to be gone.
	Quiesce metav1.Duration `json:"quiesce"`
	// FinalSync is from the final trigger to the last volume's commit:
	// snapshots, the final deltas, the destination's verification and
	// commit of every volume (they run concurrently).
	FinalSync metav1.Duration `json:"finalSync"`
	// Snapshot is the longest wait of a volume for its final snapshot
	// or, with a group snapshot, the group snapshot's wait (its creation
	// to readyToUse with every member).
	// +optional
	Snapshot *metav1.Duration `json:"snapshot,omitempty"`
	// Commit is from the last volume's commit to the group's record.
	Commit metav1.Duration `json:"commit"`
}

// Migration moves an application's volumes to a destination with a warm
// migration: pre-copy rounds while it runs, then one consistent cutover.
// The controller drives one VolumeSync per volume.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=vmig,categories=voldelta
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Rounds",type=integer,JSONPath=`.status.rounds`
// +kubebuilder:printcolumn:name="Last delta",type=integer,JSONPath=`.status.lastDeltaBytes`
// +kubebuilder:printcolumn:name="Predicted downtime",type=string,JSONPath=`.status.predictedDowntime`
// +kubebuilder:printcolumn:name="Downtime",type=string,JSONPath=`.status.downtime.total`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Migration struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   MigrationSpec   `json:"spec"`
	Status MigrationStatus `json:"status,omitempty"`
}

// MigrationList is a list of Migrations.
//
// +kubebuilder:object:root=true
type MigrationList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Migration `json:"items"`
}
