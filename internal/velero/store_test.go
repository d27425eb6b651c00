package velero

import (
	"context"
	"errors"
	"strings"
	"testing"

	velerov1 "github.com/vmware-tanzu/velero/pkg/apis/velero/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/voldelta/voldelta/internal/k8sutil"
)

func TestParseAWSCredentials(t *testing.T) {
	file := "# velero\n[default]\naws_access_key_id = AKIA\naws_secret_access_key=s3cr3t\n\n[profile other]\naws_access_key_id = B\naws_secret_access_key = C\naws_session_token = T\n"
	got, err := parseAWSCredentials([]byte(file), "")
	if err != nil || string(got[k8sutil.KeyAccessKeyID]) != "AKIA" || string(got[k8sutil.KeySecretAccessKey]) != "s3cr3t" || got[k8sutil.KeySessionToken] != nil {
		t.Fatalf("default profile: %q, %v", got, err)
	}
	got, err = parseAWSCredentials([]byte(file), "other")
	if err != nil || string(got[k8sutil.KeyAccessKeyID]) != "B" || string(got[k8sutil.KeySessionToken]) != "T" {
		t.Fatalf("profile other: %q, %v", got, err)
	}
	for _, bad := range []string{"", "[default]\naws_access_key_id = A\n", "[default]\nnonsense\n", "[x]\naws_access_key_id=A\naws_secret_access_key=B\n"} {
		if _, err := parseAWSCredentials([]byte(bad), ""); err == nil {
			t.Errorf("credentials %q accepted", bad)
		}
	}
}

func TestResolveLocation(t *testing.T) {
	ctx := context.Background()
	kube := fake.NewClientset(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "velero", Name: "cloud-credentials"},
		Data: map[string][]byte{"cloud": []byte("[default]\naws_access_key_id=A\naws_secret_access_key=B\n")}})
	bsl := &velerov1.BackupStorageLocation{ObjectMeta: metav1.ObjectMeta{Namespace: "velero", Name: "default"},
		Spec: velerov1.BackupStorageLocationSpec{Provider: "velero.io/aws", Config: map[string]string{"region": "eu-1", "s3Url": "http://minio:9000"},
			StorageType: velerov1.StorageType{ObjectStorage: &velerov1.ObjectStorageLocation{Bucket: "backups", Prefix: "/dc1/"}}}}
	loc, err := ResolveLocation(ctx, kube, bsl, Settings{Prefix: "voldelta"})
	if err != nil {
		t.Fatal(err)
	}
	if s := loc.Store; s.URL != "s3://backups/dc1/voldelta" || s.Endpoint != "http://minio:9000" || !s.Insecure || s.Region != "eu-1" || s.CredentialsSecretName != "voldelta-velero-default" {
		t.Fatalf("store %+v", s)
	}
	if string(loc.Credentials[k8sutil.KeyAccessKeyID]) != "A" {
		t.Fatalf("credentials %q", loc.Credentials)
	}
	gcp := bsl.DeepCopy()
	gcp.Spec.Provider = "gcp"
	if _, err := ResolveLocation(ctx, kube, gcp, Settings{Prefix: "voldelta"}); !errors.Is(err, ErrLocation) || !strings.Contains(err.Error(), "gcp") {
		t.Fatalf("a gcp location: %v", err)
	}
	other := bsl.DeepCopy()
	other.Spec.Credential = &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "missing"}, Key: "cloud"}
	if _, err := ResolveLocation(ctx, kube, other, Settings{Prefix: "voldelta"}); !errors.Is(err, ErrLocation) {
		t.Fatalf("a missing Secret: %v", err)
	}
}

func TestSnapshotID(t *testing.T) {
	v, g, err := ParseSnapshotID(SnapshotID("ns-pvc.x", 12))
	if err != nil || v != "ns-pvc.x" || g != 12 {
		t.Fatalf("round trip: %q %d %v", v, g, err)
	}
	for _, bad := range []string{"", "vol", "vol@", "@3", "vol@0", "vol@x"} {
		if _, _, err := ParseSnapshotID(bad); err == nil {
			t.Errorf("snapshot ID %q accepted", bad)
		}
	}
	if n := VolumeSyncName(strings.Repeat("p", 253)); len(n) > 63 {
		t.Errorf("VolumeSync name of a long PVC has %d characters", len(n))
	}
}
