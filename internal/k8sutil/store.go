package k8sutil

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"

	"github.com/minio/minio-go/v7/pkg/credentials"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/objstore"
)

// Keys of a store's credentials Secret.
const (
	KeyAccessKeyID     = "AWS_ACCESS_KEY_ID"
	KeySecretAccessKey = "AWS_SECRET_ACCESS_KEY"
	KeySessionToken    = "AWS_SESSION_TOKEN"
	KeyCA              = "ca.crt"
)

// ErrCredentials: the store's credentials Secret is missing or malformed.
var ErrCredentials = errors.New("store credentials")

// StoreOptions tune OpenStore.
type StoreOptions struct {
	// BandwidthLimit caps the bytes per second written to the store.
	BandwidthLimit float64
	// Logger; nil logs nothing.
	Logger *slog.Logger
}

// StoreConfig builds the objstore configuration of spec, reading its
// credentials Secret from namespace (one Get, never cached). Errors about
// the Secret wrap ErrCredentials; a spec that cannot be parsed is reported
// as such.
func StoreConfig(ctx context.Context, kube kubernetes.Interface, namespace string, spec v1alpha1.Store, o StoreOptions) (objstore.Config, error) {
	name := spec.CredentialsSecretName
	sec, err := kube.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return objstore.Config{}, fmt.Errorf("%w: Secret %s/%s: %w", ErrCredentials, namespace, name, err)
	}
	return StoreConfigWith(spec, sec.Data, namespace+"/"+name, o)
}

// StoreConfigWith is StoreConfig with the credentials Secret's data at
// hand (where names it in errors).
func StoreConfigWith(spec v1alpha1.Store, data map[string][]byte, where string, o StoreOptions) (objstore.Config, error) {
	var cfg objstore.Config
	var err error
	if cfg.Bucket, cfg.Prefix, err = objstore.ParseStoreURL(spec.URL); err != nil {
		return cfg, fmt.Errorf("store url: %w", err)
	}
	if spec.Endpoint != "" {
		if cfg.Endpoint, err = objstore.ParseEndpoint(spec.Endpoint, spec.Insecure); err != nil {
			return cfg, fmt.Errorf("store endpoint: %w", err)
		}
	}
	cfg.Insecure, cfg.Region, cfg.BandwidthLimit, cfg.Logger = spec.Insecure, spec.Region, o.BandwidthLimit, o.Logger
	var missing []string
	for _, k := range []string{KeyAccessKeyID, KeySecretAccessKey} {
		if len(data[k]) == 0 {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return cfg, fmt.Errorf("%w: Secret %s lacks %s", ErrCredentials, where, strings.Join(missing, ", "))
	}
	cfg.Creds = credentials.NewStaticV4(strings.TrimSpace(string(data[KeyAccessKeyID])),
		strings.TrimSpace(string(data[KeySecretAccessKey])), strings.TrimSpace(string(data[KeySessionToken])))
	if pem := data[KeyCA]; len(pem) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return cfg, fmt.Errorf("%w: Secret %s: %s holds no PEM certificate", ErrCredentials, where, KeyCA)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// OpenStore opens the store of spec with the credentials of its Secret in
// namespace: StoreConfig, then objstore.Open (which checks the credentials
// and the bucket: objstore.ErrBadCredentials, objstore.ErrNoBucket).
func OpenStore(ctx context.Context, kube kubernetes.Interface, namespace string, spec v1alpha1.Store, o StoreOptions) (*objstore.Store, error) {
	cfg, err := StoreConfig(ctx, kube, namespace, spec, o)
	if err != nil {
		return nil, err
	}
	return objstore.Open(ctx, cfg)
}
