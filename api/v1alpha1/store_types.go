package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Store locates an S3-compatible object store (MinIO, AWS S3, Ceph RGW,
// ...) and the credentials to reach it: the layout and rules of
// `voldelta push/pull/gc`.
type Store struct {
	// URL is s3://BUCKET/PREFIX. Under the prefix, chunks/ holds the
	// chunk objects shared by every volume and manifests/VOLUME/ one
	// manifest per generation.
	// +kubebuilder:validation:Pattern=`^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$`
	// +kubebuilder:validation:MaxLength=1024
	URL string `json:"url"`

	// Endpoint is the S3 API's HOST:PORT or URL, e.g.
	// minio.storage.svc:9000 or https://s3.eu-central-1.amazonaws.com.
	// Default s3.amazonaws.com.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Endpoint string `json:"endpoint,omitempty"`

	// Insecure speaks plain HTTP to the endpoint instead of HTTPS: for
	// trusted networks and tests only.
	// +optional
	Insecure bool `json:"insecure,omitempty"`

	// Region of the bucket; default: asked from the store.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Region string `json:"region,omitempty"`

	// CredentialsSecretName names a Secret in the object's namespace with
	// the keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and optionally
	// AWS_SESSION_TOKEN), and optionally ca.crt: the PEM bundle of the CAs
	// that signed an HTTPS endpoint's certificate, if not a public CA.
	// +kubebuilder:validation:MinLength=1
	CredentialsSecretName string `json:"credentialsSecretName"`
}

// StoreSource is the store a VolumeTarget pulls from.
type StoreSource struct {
	Store `json:",inline"`

	// PollInterval is how often the receiver looks for a newer generation
	// of spec.remoteVolume in the store (one small listing of its
	// manifests); default 30s, at least 1s.
	// +optional
	PollInterval *metav1.Duration `json:"pollInterval,omitempty"`
}
