// Package velero makes voldelta a Velero data mover: a backup created with
// `velero backup create --snapshot-move-data --data-mover voldelta` has its
// CSI snapshots moved by voldelta instead of Velero's own mover. For each
// DataUpload (velero.io/v2alpha1) whose spec.datamover is "voldelta", the
// Uploads reconciler has the voldelta agent of the volume's node push the
// DataUpload's VolumeSnapshot into the backup storage location's bucket as
// the next generation of the PVC's volume there, through one VolumeSync
// per PVC: a backup uploads only the chunks no earlier backup of that PVC
// stored, and reads only what changed since the last one where change
// hints exist (Longhorn).
//
// Restores (DataDownloads) are the receiver's (internal/k8sreceiver,
// restore.go), with the locations and snapshot IDs of this package. The
// deletion of a backup's generations (DeleteBackupRequests) is not built:
// see docs/velero.md.
package velero

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	velerov1 "github.com/vmware-tanzu/velero/pkg/apis/velero/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/k8sutil"
	"github.com/voldelta/voldelta/objstore"
)

// MoverName is the name a Velero backup gives the data mover
// (`--data-mover voldelta`, spec.datamover of DataUploads).
const MoverName = "voldelta"

// ErrLocation: the backup storage location cannot be used by voldelta (not
// an S3 location, no bucket, unreadable credentials). Not retryable until
// the location or its Secret changes.
var ErrLocation = errors.New("backup storage location unusable")

// DefaultPrefix is where voldelta keeps its volumes under a location's
// bucket and prefix: plugins/ is the one top-level folder there that
// Velero leaves to its plugins (a location holding any other folder than
// Velero's own is marked Unavailable by Velero's validation).
const DefaultPrefix = "plugins/voldelta"

// Settings are read from the ConfigMap named MoverName in Velero's
// namespace; a missing ConfigMap gives the defaults.
type Settings struct {
	// Prefix is the folder of voldelta's volumes under the location's
	// bucket and prefix (key "prefix"); default DefaultPrefix.
	Prefix string
	// BandwidthLimit caps each upload (key "bandwidthLimit", the units of
	// a VolumeSync's spec.bandwidthLimit); default unlimited.
	BandwidthLimit string
	// VolumeSnapshotClassName is passed to the VolumeSyncs (key
	// "volumeSnapshotClassName"); it matters only for rounds voldelta
	// snapshots itself, which a DataUpload's are not.
	VolumeSnapshotClassName string
}

// ReadSettings reads the mover's ConfigMap in namespace.
func ReadSettings(ctx context.Context, kube kubernetes.Interface, namespace string) (Settings, error) {
	s := Settings{Prefix: DefaultPrefix}
	cm, err := kube.CoreV1().ConfigMaps(namespace).Get(ctx, MoverName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("read ConfigMap %s/%s: %w", namespace, MoverName, err)
	}
	for k, v := range cm.Data {
		switch k {
		case "prefix":
			s.Prefix = strings.Trim(v, "/")
		case "bandwidthLimit":
			s.BandwidthLimit = v
		case "volumeSnapshotClassName":
			s.VolumeSnapshotClassName = v
		default:
			return s, fmt.Errorf("ConfigMap %s/%s: unknown key %q (want prefix, bandwidthLimit, volumeSnapshotClassName)", namespace, MoverName, k)
		}
	}
	if s.Prefix == "" {
		return s, fmt.Errorf("ConfigMap %s/%s: prefix is empty", namespace, MoverName)
	}
	return s, nil
}

// Location is what voldelta needs of a BackupStorageLocation.
type Location struct {
	// Store is the voldelta store (URL s3://bucket/prefix/<settings
	// prefix>, endpoint, region), with CredentialsSecretName set to the
	// Secret Credentials should be written to in a VolumeSync's namespace.
	Store v1alpha1.Store
	// Credentials are the location's keys in the layout voldelta's store
	// Secrets have (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optional
	// AWS_SESSION_TOKEN).
	Credentials map[string][]byte
}

// ResolveLocation turns a BackupStorageLocation of the AWS plugin (S3, and
// S3-compatible stores such as MinIO through config.s3Url) into a store
// and its credentials, read from the location's credential Secret (or
// Velero's default, cloud-credentials key "cloud") in its namespace.
func ResolveLocation(ctx context.Context, kube kubernetes.Interface, bsl *velerov1.BackupStorageLocation, s Settings) (Location, error) {
	var loc Location
	provider := strings.TrimPrefix(bsl.Spec.Provider, "velero.io/")
	if provider != "aws" {
		return loc, fmt.Errorf("BackupStorageLocation %s/%s: provider %q: %w (voldelta stores in S3 and S3-compatible stores: provider aws)", bsl.Namespace, bsl.Name, bsl.Spec.Provider, ErrLocation)
	}
	os := bsl.Spec.ObjectStorage
	if os == nil || os.Bucket == "" {
		return loc, fmt.Errorf("BackupStorageLocation %s/%s: no objectStorage.bucket: %w", bsl.Namespace, bsl.Name, ErrLocation)
	}
	path := strings.Trim(strings.Join([]string{os.Bucket, strings.Trim(os.Prefix, "/"), s.Prefix}, "/"), "/")
	loc.Store.URL = "s3://" + strings.ReplaceAll(path, "//", "/")
	cfg := bsl.Spec.Config
	loc.Store.Region = cfg["region"]
	if u := cfg["s3Url"]; u != "" {
		loc.Store.Endpoint = u
		loc.Store.Insecure = strings.HasPrefix(u, "http://")
	}
	sel := corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cloud-credentials"}, Key: "cloud"}
	if bsl.Spec.Credential != nil {
		sel = *bsl.Spec.Credential
	}
	sec, err := kube.CoreV1().Secrets(bsl.Namespace).Get(ctx, sel.Name, metav1.GetOptions{})
	if err != nil {
		return loc, fmt.Errorf("BackupStorageLocation %s/%s: credentials Secret %s: %w", bsl.Namespace, bsl.Name, sel.Name, errors.Join(ErrLocation, err))
	}
	loc.Credentials, err = parseAWSCredentials(sec.Data[sel.Key], cfg["profile"])
	if err != nil {
		return loc, fmt.Errorf("BackupStorageLocation %s/%s: Secret %s key %s: %w: %v", bsl.Namespace, bsl.Name, sel.Name, sel.Key, ErrLocation, err)
	}
	loc.Store.CredentialsSecretName = CredentialsSecretName(bsl.Name)
	return loc, nil
}

// ReadLocation reads the BackupStorageLocation named location in Velero's
// namespace and resolves it with the mover's settings (ResolveLocation).
func ReadLocation(ctx context.Context, cl client.Reader, kube kubernetes.Interface, namespace, location string) (Location, error) {
	set, err := ReadSettings(ctx, kube, namespace)
	if err != nil {
		return Location{}, err
	}
	var bsl velerov1.BackupStorageLocation
	if err := cl.Get(ctx, client.ObjectKey{Namespace: namespace, Name: location}, &bsl); err != nil {
		return Location{}, fmt.Errorf("BackupStorageLocation %s/%s: %w", namespace, location, err)
	}
	return ResolveLocation(ctx, kube, &bsl, set)
}

// OpenLocation opens the store of the BackupStorageLocation named
// location in Velero's namespace, with the location's credentials.
func OpenLocation(ctx context.Context, cl client.Reader, kube kubernetes.Interface, namespace, location string, log *slog.Logger) (*objstore.Store, error) {
	loc, err := ReadLocation(ctx, cl, kube, namespace, location)
	if err != nil {
		return nil, err
	}
	cfg, err := k8sutil.StoreConfigWith(loc.Store, loc.Credentials, "of BackupStorageLocation "+location, k8sutil.StoreOptions{Logger: log})
	if err != nil {
		return nil, err
	}
	return objstore.Open(ctx, cfg)
}

// CredentialsSecretName is the Secret a location's credentials are copied
// to in the namespaces of the PVCs it backs up.
func CredentialsSecretName(bsl string) string {
	return "voldelta-velero-" + shortName(bsl, 40)
}

// parseAWSCredentials reads an AWS shared credentials file (the format of
// Velero's cloud-credentials Secret) and returns the profile's keys (default
// profile "default").
func parseAWSCredentials(b []byte, profile string) (map[string][]byte, error) {
	if profile == "" {
		profile = "default"
	}
	if len(b) == 0 {
		return nil, errors.New("empty")
	}
	keys := map[string]string{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line[1:len(line)-1]), "profile "))
		case section == profile:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				return nil, fmt.Errorf("line %q: want key = value", line)
			}
			keys[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	id, secret := keys["aws_access_key_id"], keys["aws_secret_access_key"]
	if id == "" || secret == "" {
		return nil, fmt.Errorf("profile %q has no aws_access_key_id and aws_secret_access_key", profile)
	}
	out := map[string][]byte{k8sutil.KeyAccessKeyID: []byte(id), k8sutil.KeySecretAccessKey: []byte(secret)}
	if tok := keys["aws_session_token"]; tok != "" {
		out[k8sutil.KeySessionToken] = []byte(tok)
	}
	return out, nil
}

// shortName returns s if it has at most n bytes, else a prefix and a hash
// of s in n bytes.
func shortName(s string, n int) string {
	if len(s) <= n {
		return s
	}
	h := sha256.Sum256([]byte(s))
	return strings.TrimRight(s[:n-11], "-.") + "-" + hex.EncodeToString(h[:5])
}

// SnapshotID is the DataUpload's status.snapshotID of a backup: the store
// volume and the generation pushed, "<volume>@<generation>".
func SnapshotID(volume string, generation int64) string {
	return volume + "@" + strconv.FormatInt(generation, 10)
}

// ParseSnapshotID splits a SnapshotID.
func ParseSnapshotID(id string) (volume string, generation int64, err error) {
	v, g, ok := strings.Cut(id, "@")
	if ok {
		generation, err = strconv.ParseInt(g, 10, 64)
	}
	if !ok || err != nil || v == "" || generation < 1 {
		return "", 0, fmt.Errorf("snapshot ID %q: want <volume>@<generation>", id)
	}
	return v, generation, nil
}

// PatchLocked applies mutate to obj and patches the change with an
// optimistic lock (Velero's CRDs have no status subresource: the status
// is patched with the object). kind names it in the error.
func PatchLocked(ctx context.Context, cl client.Client, kind string, obj client.Object, mutate func()) error {
	orig := obj.DeepCopyObject().(client.Object)
	mutate()
	if err := cl.Patch(ctx, obj, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("update %s %s/%s: %w", kind, obj.GetNamespace(), obj.GetName(), err)
	}
	return nil
}
