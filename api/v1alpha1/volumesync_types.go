package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// VolumeSyncSpec is what an orchestrator asks for: keep a replica of a PVC
// on a receiver, one crash-consistent snapshot per round.
//
// +kubebuilder:validation:XValidation:rule="!has(self.group) || has(self.destination.address)",message="group needs a receiver destination (destination.address): a store does not promote"
type VolumeSyncSpec struct {
	// SourcePVC is the name of the PersistentVolumeClaim to replicate, in
	// the VolumeSync's namespace.
	// +kubebuilder:validation:MinLength=1
	SourcePVC string `json:"sourcePVC"`

	// Destination is where the replica goes, a receiver or an object
	// store, and the volume name it is known by there.
	Destination Destination `json:"destination"`

	// Trigger says when rounds run.
	// +optional
	Trigger Trigger `json:"trigger,omitempty"`

	// VolumeSnapshotClassName is the VolumeSnapshotClass of the per-round
	// snapshots (for Longhorn, a class with parameters.type: snap). Empty:
	// the cluster's default class for the volume's driver.
	// +optional
	VolumeSnapshotClassName string `json:"volumeSnapshotClassName,omitempty"`

	// BandwidthLimit caps the round's wire rate per second: "100Mbit",
	// "12MiB", "500k" (the units of `voldelta send --bwlimit`). Empty or
	// "0": unlimited.
	// +optional
	// +kubebuilder:validation:MaxLength=32
	BandwidthLimit string `json:"bandwidthLimit,omitempty"`

	// Paused stops new rounds from starting; a running round finishes.
	// +optional
	Paused bool `json:"paused,omitempty"`

	// Group, if set, makes every round of this VolumeSync a member of a
	// group of volumes committed together (a Migration's cutover sets it
	// on each volume's final round). The receiver records the group on the
	// VolumeTarget (status.group, status.groupGeneration) and, once every
	// member committed a round with promote, promotes them all: it
	// annotates the target PVCs, releases them and refuses further rounds
	// until each VolumeTarget is re-armed (docs/kubernetes.md,
	// "Promotion"). Needs a receiver destination in Kubernetes mode; a
	// standalone receiver refuses promote. A round carries the group only
	// if its snapshot was requested for the current spec.trigger.manual
	// (status.pendingManualTrigger equals it): set group and a new
	// trigger in one update, after the workloads are quiesced, so that
	// only a snapshot taken after that is ever sent as a member.
	// +optional
	Group *SyncGroup `json:"group,omitempty"`

	// Freeze, if set, asks the agent of the volume's node to freeze its
	// filesystem (FIFREEZE on every mount of it by a pod of that node)
	// and to keep it frozen until freeze is removed or its token changes,
	// or for timeout at most; status.freeze reports it. A Migration sets
	// it at the cutover for spec.quiesce.freeze. Block-mode volumes and
	// volumes no pod of the node mounts cannot be frozen.
	// +optional
	Freeze *VolumeFreeze `json:"freeze,omitempty"`
}

// VolumeFreeze is a request to freeze a VolumeSync's filesystem.
type VolumeFreeze struct {
	// Token identifies the request: status.freeze reports it, and a new
	// token thaws the filesystem and freezes it again.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	Token string `json:"token"`

	// Timeout is the longest the filesystem stays frozen: the agent thaws
	// it that long after it froze it (status reason Timeout), whatever
	// the spec says; default 2m, at most 30m.
	// +optional
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s') && duration(self) <= duration('30m')",message="timeout: more than 0s, at most 30m"
	Timeout *metav1.Duration `json:"timeout,omitempty"`
}

// FreezePhase is where a freeze request is.
// +kubebuilder:validation:Enum=Frozen;Thawed;Failed
type FreezePhase string

// Freeze phases.
const (
	FreezeFrozen FreezePhase = "Frozen" // the agent froze every mount of the filesystem on its node
	FreezeThawed FreezePhase = "Thawed" // frozen, then thawed: released, timed out, or the VolumeSync is going
	FreezeFailed FreezePhase = "Failed" // could not be frozen (or was thawed by someone else); nothing stays frozen
)

// Reasons of a freeze's status.
const (
	FreezeReasonFrozen        = "Frozen"        // Frozen
	FreezeReasonReleased      = "Released"      // Thawed: spec.freeze removed or its token changed
	FreezeReasonTimeout       = "Timeout"       // Thawed: spec.freeze.timeout passed
	FreezeReasonCannotFreeze  = "CannotFreeze"  // Failed: block volume, no mount on the node, not a whole filesystem, unsupported
	FreezeReasonAlreadyFrozen = "AlreadyFrozen" // Failed: the filesystem was frozen by someone else
	FreezeReasonThawedOutside = "ThawedOutside" // Failed: the filesystem was thawed by someone else while frozen
)

// VolumeFreezeStatus is what the agent reports of spec.freeze.
type VolumeFreezeStatus struct {
	// Token is the spec.freeze.token this reports on.
	Token string `json:"token"`
	// Phase: Frozen, Thawed or Failed.
	Phase FreezePhase `json:"phase"`
	// Node is the node whose agent froze (or failed to freeze) it.
	// +optional
	Node string `json:"node,omitempty"`
	// FrozenTime is when the filesystem was frozen.
	// +optional
	FrozenTime *metav1.MicroTime `json:"frozenTime,omitempty"`
	// ThawedTime is when it was thawed.
	// +optional
	ThawedTime *metav1.MicroTime `json:"thawedTime,omitempty"`
	// Reason is one word: Frozen, Released, Timeout, CannotFreeze,
	// AlreadyFrozen, ThawedOutside.
	// +optional
	Reason string `json:"reason,omitempty"`
	// Message says what was frozen, or why not.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Message string `json:"message,omitempty"`
}

// SyncGroup names the group a VolumeSync's rounds belong to.
type SyncGroup struct {
	// Name identifies the group, the same on every member, and unique per
	// attempt: e.g. "<namespace>-<migration>-<first 8 of its uid>". The
	// rules of a volume name: 1-128 letters, digits, '.', '_' or '-',
	// starting with a letter or digit.
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`
	Name string `json:"name"`

	// Members is the number of volumes (VolumeSyncs, each to its own
	// VolumeTarget) in the group.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=64
	Members int32 `json:"members"`

	// Promote marks the group's final round: the destination promotes the
	// group when every member committed a round with promote. Without it
	// the group is only recorded.
	// +optional
	Promote bool `json:"promote,omitempty"`
}

// Destination is where a VolumeSync's rounds go: a receiver (address and
// tlsSecretName), which writes the replica in place as each round arrives,
// or an object store (store), which keeps every round as a generation for
// VolumeTargets (or `voldelta pull`) to pull.
//
// +kubebuilder:validation:XValidation:rule="has(self.address) != has(self.store)",message="set either address (a receiver) or store (an object store)"
// +kubebuilder:validation:XValidation:rule="has(self.address) == has(self.tlsSecretName)",message="tlsSecretName goes with address (and only with it)"
// +kubebuilder:validation:XValidation:rule="!has(self.serverName) || has(self.address)",message="serverName goes with address"
type Destination struct {
	// Address is the receiver's host:port.
	// +optional
	// +kubebuilder:validation:MinLength=1
	Address string `json:"address,omitempty"`

	// TLSSecretName names a Secret in the VolumeSync's namespace with the
	// agent's client certificate for mutual TLS: ca.crt (the CA that signed
	// the receiver's certificate), tls.crt and tls.key. Required with
	// address.
	// +optional
	// +kubebuilder:validation:MinLength=1
	TLSSecretName string `json:"tlsSecretName,omitempty"`

	// ServerName, if set, is the name the receiver's certificate must
	// carry; default the host part of Address.
	// +optional
	ServerName string `json:"serverName,omitempty"`

	// Store, instead of a receiver: every round is pushed to this object
	// store as the next generation of volumeName (chunks the store holds
	// already, for any volume, are not uploaded again).
	// +optional
	Store *Store `json:"store,omitempty"`

	// VolumeName is the volume's name on the receiver or in the store (a
	// VolumeTarget's spec.remoteVolume). Default: <namespace>-<sourcePVC>.
	// +optional
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`
	VolumeName string `json:"volumeName,omitempty"`
}

// Trigger says when a VolumeSync's rounds run: every Interval after the
// last successful round, and once more whenever Manual changes.
type Trigger struct {
	// Interval between the end of a successful round and the start of the
	// next, e.g. "15m". Empty: rounds run only on manual triggers (and once
	// after creation).
	// +optional
	Interval *metav1.Duration `json:"interval,omitempty"`

	// Manual starts one round whenever it differs from
	// status.lastManualTrigger: an orchestrator bumps it (a counter or a
	// timestamp) and waits until status.lastManualTrigger equals it with
	// Ready true, e.g. for the final round before a cutover.
	// +optional
	Manual string `json:"manual,omitempty"`

	// SnapshotName, if set, is an existing VolumeSnapshot of spec.sourcePVC
	// in the VolumeSync's namespace that the round of Manual reads instead
	// of taking a snapshot of its own (e.g. a member of a
	// VolumeGroupSnapshot taken for the final round of a Migration). It
	// applies only to a round started for a new Manual value: set both in
	// one update. The agent waits until it is ready, never deletes it (its
	// creator does: a VolumeGroupSnapshot's members go with it) and
	// records it as status.baseSnapshot once the round commits.
	// +optional
	SnapshotName string `json:"snapshotName,omitempty"`
}

// Phase is a one-word summary of a VolumeSync or a VolumeTarget.
type Phase string

// Phases of a VolumeSync.
const (
	PhasePending  Phase = "Pending"  // no round has committed yet
	PhaseSyncing  Phase = "Syncing"  // a round runs
	PhaseIdle     Phase = "Idle"     // the last round committed; waiting for the next
	PhasePaused   Phase = "Paused"   // spec.paused
	PhaseDegraded Phase = "Degraded" // the last round failed; retrying
	PhasePromoted Phase = "Promoted" // VolumeTarget: promoted with its group; released until re-armed
)

// Condition types of a VolumeSync.
const (
	// ConditionReady is true when the last round committed and nothing
	// failed since.
	ConditionReady = "Ready"
	// ConditionSyncing is true while a round runs (snapshot, send, commit).
	ConditionSyncing = "Syncing"
	// ConditionDegraded is true when the last attempt failed; its reason
	// says where.
	ConditionDegraded = "Degraded"
)

// Condition reasons.
const (
	ReasonSynced            = "Synced"                  // a round committed
	ReasonNeverSynced       = "NeverSynced"             // no round committed yet
	ReasonWaitingSnapshot   = "WaitingForSnapshot"      // the snapshot is not ready yet
	ReasonSending           = "Sending"                 // reading the snapshot and sending
	ReasonIdle              = "Idle"                    // no round runs
	ReasonPaused            = "Paused"                  // spec.paused
	ReasonSourceNotFound    = "SourceNotFound"          // PVC, PV or device missing
	ReasonSnapshotFailed    = "SnapshotFailed"          // the VolumeSnapshot failed
	ReasonSecretInvalid     = "TLSSecretInvalid"        // the TLS Secret is missing or malformed
	ReasonSyncFailed        = "SyncFailed"              // the round itself failed
	ReasonInvalidSpec       = "InvalidSpec"             // the spec cannot be acted on
	ReasonRootMismatch      = "RootMismatch"            // the receiver committed another root
	ReasonReceiverRefused   = "ReceiverRefused"         // the receiver refused the round
	ReasonNoProblem         = "AsExpected"              // Degraded false
	ReasonTargetIncomplete  = "Incomplete"              // VolumeTarget: an apply did not finish
	ReasonTargetCommitted   = "Committed"               // VolumeTarget: a generation is committed
	ReasonTargetUnavailable = "TargetUnavailable"       // VolumeTarget: its volume cannot be resolved
	ReasonStoreCredentials  = "StoreCredentialsInvalid" // the store's credentials Secret is missing or malformed
	ReasonStoreUnavailable  = "StoreUnavailable"        // the store refused: bad credentials, missing bucket, unreachable
	ReasonPulling           = "Pulling"                 // VolumeTarget: a pull from the store runs
	ReasonPullFailed        = "PullFailed"              // VolumeTarget: the last pull failed; retrying
	ReasonTargetFull        = "TargetFull"              // the target's filesystem (or the receiver's state directory) is full
	ReasonTargetState       = "TargetStateInvalid"      // the receiver's state is corrupt, the target is claimed by another volume, or it vanished
	ReasonTargetModified    = "TargetModified"          // VolumeTarget: changed (or possibly changed) outside voldelta since its commit
	ReasonPromoted          = "Promoted"                // VolumeTarget: promoted with its group; rounds refused until re-armed
	ReasonRearmed           = "Rearmed"                 // VolumeTarget: re-armed after a promotion; rounds accepted again
	ReasonNotPromoted       = "NotPromoted"             // VolumeTarget: not promoted (no group round, or the group is incomplete)
)

// VolumeSyncStatus is what the agent reports.
type VolumeSyncStatus struct {
	// Phase summarises the conditions.
	// +optional
	Phase Phase `json:"phase,omitempty"`

	// Conditions: Ready, Syncing, Degraded.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// ObservedGeneration is the metadata.generation last acted on.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Node is the node whose agent handles this VolumeSync (where the
	// source volume is attached).
	// +optional
	Node string `json:"node,omitempty"`

	// LastSyncStartTime is when the current or last round started (to the
	// microsecond: a cutover's downtime is measured with it).
	// +optional
	LastSyncStartTime *metav1.MicroTime `json:"lastSyncStartTime,omitempty"`
	// LastSyncTime is when the last successful round committed (to the
	// microsecond).
	// +optional
	LastSyncTime *metav1.MicroTime `json:"lastSyncTime,omitempty"`
	// LastSyncDuration is how long the last successful round took,
	// snapshot included.
	// +optional
	LastSyncDuration *metav1.Duration `json:"lastSyncDuration,omitempty"`
	// LastSnapshotDuration is how long the last successful round waited
	// for its VolumeSnapshot to be ready to use (part of
	// lastSyncDuration).
	// +optional
	LastSnapshotDuration *metav1.Duration `json:"lastSnapshotDuration,omitempty"`
	// NextSyncTime is when the next scheduled round is due.
	// +optional
	NextSyncTime *metav1.Time `json:"nextSyncTime,omitempty"`

	// LastGeneration is the generation committed by the last successful
	// round: the receiver's, or the store's for a store destination.
	// +optional
	LastGeneration int64 `json:"lastGeneration,omitempty"`
	// LastRootHash is the root hash (BLAKE3 over the manifest, hex) both
	// ends hold after the last successful round.
	// +optional
	LastRootHash string `json:"lastRootHash,omitempty"`
	// LastSourceBytes is the size of the volume in the last round.
	// +optional
	LastSourceBytes int64 `json:"lastSourceBytes,omitempty"`
	// LastBytesSent is the uncompressed size of the chunks the last round
	// sent (uploaded, to a store).
	// +optional
	LastBytesSent int64 `json:"lastBytesSent,omitempty"`
	// LastWireBytes is what the last round wrote to the network (TLS,
	// framing and manifest included; to a store: the objects as stored,
	// manifest included, without HTTP overhead).
	// +optional
	LastWireBytes int64 `json:"lastWireBytes,omitempty"`
	// LastReusedBytes of the last round's snapshot were not read: the
	// storage reported them unchanged since the previous round's snapshot
	// (Longhorn's snapshot chain), so the previous manifest's chunks were
	// reused.
	// +optional
	LastReusedBytes int64 `json:"lastReusedBytes,omitempty"`

	// LastManualTrigger is spec.trigger.manual as of the last successful
	// round.
	// +optional
	LastManualTrigger string `json:"lastManualTrigger,omitempty"`

	// BaseSnapshot is the VolumeSnapshot of the last successful round; it
	// is kept until the next round commits.
	// +optional
	BaseSnapshot string `json:"baseSnapshot,omitempty"`
	// PendingSnapshot is the VolumeSnapshot of the round in progress (or
	// being retried).
	// +optional
	PendingSnapshot string `json:"pendingSnapshot,omitempty"`

	// PendingManualTrigger is spec.trigger.manual when the pending
	// snapshot was taken; it becomes lastManualTrigger when that round
	// commits (a bump after the snapshot needs another round).
	// +optional
	PendingManualTrigger string `json:"pendingManualTrigger,omitempty"`

	// Progress of the running round while it sends, updated every few
	// seconds; unset between rounds.
	// +optional
	Progress *RoundProgress `json:"progress,omitempty"`

	// Rounds counts the successful rounds.
	// +optional
	Rounds int64 `json:"rounds,omitempty"`
	// ConsecutiveFailures counts failed attempts since the last success.
	// +optional
	ConsecutiveFailures int32 `json:"consecutiveFailures,omitempty"`

	// Freeze reports spec.freeze: whether the agent froze the filesystem,
	// and when it thawed it.
	// +optional
	Freeze *VolumeFreezeStatus `json:"freeze,omitempty"`
}

// RoundProgress is how far a running round got.
type RoundProgress struct {
	// SourceBytes is the size of the snapshot being sent.
	SourceBytes int64 `json:"sourceBytes"`
	// ScannedBytes of the snapshot have been chunked and hashed.
	ScannedBytes int64 `json:"scannedBytes"`
	// NeededBytes is the size of the chunks the receiver asked for so far.
	NeededBytes int64 `json:"neededBytes"`
	// SentBytes of those have been sent.
	SentBytes int64 `json:"sentBytes"`
	// ScanDone is true once the whole snapshot was scanned: NeededBytes
	// is then final.
	// +optional
	ScanDone bool `json:"scanDone,omitempty"`
	// BytesPerSecond is the sending rate since StartTime.
	// +optional
	BytesPerSecond int64 `json:"bytesPerSecond,omitempty"`
	// ETA is the estimated time until every needed byte is sent, at that
	// rate; set once ScanDone and something was sent.
	// +optional
	ETA *metav1.Duration `json:"eta,omitempty"`
	// StartTime is when the round began sending.
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`
	// UpdateTime is when these figures were taken.
	UpdateTime metav1.Time `json:"updateTime"`
}

// VolumeSync replicates a PersistentVolumeClaim to a voldelta receiver or
// an object store: the agent on the node where the volume is attached takes
// a VolumeSnapshot per round, sends what the receiver (or the store) lacks,
// and reports here.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=vsync,categories=voldelta
// +kubebuilder:printcolumn:name="Source",type=string,JSONPath=`.spec.sourcePVC`
// +kubebuilder:printcolumn:name="Destination",type=string,JSONPath=`.spec.destination.address`
// +kubebuilder:printcolumn:name="Store",type=string,JSONPath=`.spec.destination.store.url`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Gen",type=integer,JSONPath=`.status.lastGeneration`
// +kubebuilder:printcolumn:name="Last sync",type=date,JSONPath=`.status.lastSyncTime`
// +kubebuilder:printcolumn:name="Sent",type=integer,JSONPath=`.status.lastBytesSent`,priority=1
// +kubebuilder:printcolumn:name="Duration",type=string,JSONPath=`.status.lastSyncDuration`,priority=1
// +kubebuilder:printcolumn:name="Next",type=date,JSONPath=`.status.nextSyncTime`,priority=1
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.status.node`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type VolumeSync struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   VolumeSyncSpec   `json:"spec"`
	Status VolumeSyncStatus `json:"status,omitempty"`
}

// VolumeSyncList is a list of VolumeSyncs.
//
// +kubebuilder:object:root=true
type VolumeSyncList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []VolumeSync `json:"items"`
}
