package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// VolumeTargetSpec says which local volume receives a remote volume, and
// who may write it.
//
// +kubebuilder:validation:XValidation:rule="has(self.pvc) != has(self.longhornVolume)",message="set exactly one of pvc and longhornVolume"
// +kubebuilder:validation:XValidation:rule="has(self.allowedIdentities) != has(self.store)",message="set either allowedIdentities (agents send to this target) or store (the receiver pulls it from a store)"
type VolumeTargetSpec struct {
	// RemoteVolume is the volume name agents send under, or the volume in
	// the store (a VolumeSync's spec.destination.volumeName). Unique among
	// the VolumeTargets a receiver serves.
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`
	RemoteVolume string `json:"remoteVolume"`

	// PVC is the PersistentVolumeClaim, in the VolumeTarget's namespace,
	// whose volume is overwritten with the replica. It must be a block or
	// Longhorn volume at least as large as the source, and must not be in
	// use by a workload while rounds run. Exactly one of pvc and
	// longhornVolume is set.
	// +optional
	PVC string `json:"pvc,omitempty"`

	// LonghornVolume names a Longhorn volume (longhorn.io Volume in the
	// Longhorn namespace) to write instead of a PVC's volume.
	// +optional
	LonghornVolume string `json:"longhornVolume,omitempty"`

	// AllowedIdentities are the client certificate names (common name,
	// DNS SAN or URI SAN) of the agents allowed to write this target.
	// Exactly one of allowedIdentities and store is set.
	// +optional
	// +kubebuilder:validation:MinItems=1
	AllowedIdentities []string `json:"allowedIdentities,omitempty"`

	// Store, instead of agents sending: the receiver pulls every new
	// generation of remoteVolume from this object store into the target,
	// in place (only the chunks the target lacks are downloaded), and
	// agents may not write it.
	// +optional
	Store *StoreSource `json:"store,omitempty"`

	// Rearm re-arms a promoted target: whenever it differs from
	// status.lastRearm, the receiver clears status.promoted, records it as
	// status.lastRearm and accepts rounds again (and attaches the volume
	// again with --attach). Bump it (a counter or a timestamp) to sync into
	// a target after its group was promoted, e.g. to migrate back.
	// +optional
	// +kubebuilder:validation:MaxLength=128
	Rearm string `json:"rearm,omitempty"`
}

// Condition types of a VolumeTarget besides Ready.
const (
	// ConditionPromoted is true when the target was promoted with its
	// group: its PVC is annotated and released, and rounds are refused
	// until it is re-armed.
	ConditionPromoted = "Promoted"
)

// Annotations the receiver sets on a promoted target's PVC.
const (
	// AnnotationMigration is the group (status.group) the PVC's image was
	// committed in.
	AnnotationMigration = "voldelta.io/migration"
	// AnnotationGeneration is the receiver's generation of the image.
	AnnotationGeneration = "voldelta.io/generation"
	// AnnotationRootHash is the image's root hash (hex).
	AnnotationRootHash = "voldelta.io/root-hash"
)

// VolumeTargetStatus is what the receiver reports.
type VolumeTargetStatus struct {
	// Phase: Pending (nothing committed yet), Idle (a generation is
	// committed and nothing is being written), Syncing (an apply or a
	// pull runs or was interrupted: the target is incomplete), Degraded
	// (the volume cannot be resolved, or the last pull failed), Promoted
	// (promoted with its group and released until re-armed).
	// +optional
	Phase Phase `json:"phase,omitempty"`
	// Conditions: Ready (a verified generation is in place), Promoted
	// (promoted with its group; see status.promoted).
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// ObservedGeneration is the metadata.generation last acted on.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// DevicePath is where the receiver writes the target on its node.
	// +optional
	DevicePath string `json:"devicePath,omitempty"`
	// Generation is the last committed generation.
	// +optional
	Generation int64 `json:"generation,omitempty"`
	// RootHash is the root hash of the last committed generation (hex).
	// +optional
	RootHash string `json:"rootHash,omitempty"`
	// Size is the size of the last committed image in bytes.
	// +optional
	Size int64 `json:"size,omitempty"`
	// CommittedTime is when the last generation was committed.
	// +optional
	CommittedTime *metav1.Time `json:"committedTime,omitempty"`
	// Incomplete is true when an apply started after the last commit and
	// has not committed: the target does not hold any consistent image
	// until the next round succeeds.
	// +optional
	Incomplete bool `json:"incomplete,omitempty"`
	// LastWriter is the identity of the agent that committed last, or
	// the store a pull came from.
	// +optional
	LastWriter string `json:"lastWriter,omitempty"`

	// StoreGeneration is the store's generation of remoteVolume the
	// target holds (store targets): an orchestrator waits for it to reach
	// the VolumeSync's status.lastGeneration before a cutover.
	// +optional
	StoreGeneration int64 `json:"storeGeneration,omitempty"`
	// LastPollTime is when the store was last looked at.
	// +optional
	LastPollTime *metav1.Time `json:"lastPollTime,omitempty"`
	// LastPullDuration is how long the last successful pull took.
	// +optional
	LastPullDuration *metav1.Duration `json:"lastPullDuration,omitempty"`
	// LastPullDownloadedBytes is what the last successful pull downloaded
	// (chunk objects as stored, and the manifest).
	// +optional
	LastPullDownloadedBytes int64 `json:"lastPullDownloadedBytes,omitempty"`
	// ConsecutiveFailures counts failed pulls since the last success.
	// +optional
	ConsecutiveFailures int32 `json:"consecutiveFailures,omitempty"`

	// Group is the group of the round that committed the last
	// generation (a VolumeSync's spec.group.name); empty if that round
	// had none.
	// +optional
	Group string `json:"group,omitempty"`
	// GroupGeneration is the generation committed in that group round.
	// +optional
	GroupGeneration int64 `json:"groupGeneration,omitempty"`
	// GroupMembers is the member count that round announced.
	// +optional
	GroupMembers int32 `json:"groupMembers,omitempty"`
	// GroupPromote is true when that round was the group's final one
	// (spec.group.promote).
	// +optional
	GroupPromote bool `json:"groupPromote,omitempty"`

	// Promoted is true from the group's promotion until spec.rearm
	// changes: the PVC is annotated and released, and rounds are
	// refused (ERROR 15, the agent's ReceiverRefused "promoted").
	// +optional
	Promoted bool `json:"promoted,omitempty"`
	// PromotedGroup and PromotedGeneration are the group and generation
	// of the last promotion (kept after a re-arm).
	// +optional
	PromotedGroup string `json:"promotedGroup,omitempty"`
	// +optional
	PromotedGeneration int64 `json:"promotedGeneration,omitempty"`
	// PromotedTime is when the last promotion happened.
	// +optional
	PromotedTime *metav1.Time `json:"promotedTime,omitempty"`
	// LastRearm is spec.rearm as of the last re-arm.
	// +optional
	LastRearm string `json:"lastRearm,omitempty"`

	// Progress of the running pull (store targets) or agent's round,
	// updated every few seconds; unset between them.
	// +optional
	Progress *TargetProgress `json:"progress,omitempty"`
}

// TargetProgress is how far a running pull got: the manifest is
// classified against the target (what is in place, what can be copied
// within it, what must be fetched), and the chunks asked for are fetched
// and written, while it is still being classified.
type TargetProgress struct {
	// SourceBytes is the size of the generation being applied.
	SourceBytes int64 `json:"sourceBytes"`
	// NeededBytes is the size of the chunks asked for so far; final once
	// Planned.
	NeededBytes int64 `json:"neededBytes"`
	// FetchedBytes of those are written.
	FetchedBytes int64 `json:"fetchedBytes"`
	// CopiedBytes were copied within the target instead of fetched.
	CopiedBytes int64 `json:"copiedBytes"`
	// Planned is true once every chunk to fetch was asked for.
	Planned bool `json:"planned,omitempty"`
	// BytesPerSecond is the fetch rate since StartTime.
	// +optional
	BytesPerSecond int64 `json:"bytesPerSecond,omitempty"`
	// ETA is the estimated time until every needed byte is written, at
	// that rate; set once Planned and something was fetched.
	// +optional
	ETA *metav1.Duration `json:"eta,omitempty"`
	// StartTime is when the pull began.
	StartTime metav1.Time `json:"startTime"`
	// UpdateTime is when these figures were taken.
	UpdateTime metav1.Time `json:"updateTime"`
}

// VolumeTarget maps a remote volume name to a local volume on the
// destination cluster; the receiver in Kubernetes mode serves every
// VolumeTarget it watches.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=vtarget,categories=voldelta
// +kubebuilder:printcolumn:name="Remote volume",type=string,JSONPath=`.spec.remoteVolume`
// +kubebuilder:printcolumn:name="PVC",type=string,JSONPath=`.spec.pvc`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Gen",type=integer,JSONPath=`.status.generation`
// +kubebuilder:printcolumn:name="Store gen",type=integer,JSONPath=`.status.storeGeneration`,priority=1
// +kubebuilder:printcolumn:name="Incomplete",type=boolean,JSONPath=`.status.incomplete`
// +kubebuilder:printcolumn:name="Committed",type=date,JSONPath=`.status.committedTime`
// +kubebuilder:printcolumn:name="Group",type=string,JSONPath=`.status.group`,priority=1
// +kubebuilder:printcolumn:name="Promoted",type=boolean,JSONPath=`.status.promoted`
// +kubebuilder:printcolumn:name="Root",type=string,JSONPath=`.status.rootHash`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type VolumeTarget struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   VolumeTargetSpec   `json:"spec"`
	Status VolumeTargetStatus `json:"status,omitempty"`
}

// VolumeTargetList is a list of VolumeTargets.
//
// +kubebuilder:object:root=true
type VolumeTargetList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []VolumeTarget `json:"items"`
}
