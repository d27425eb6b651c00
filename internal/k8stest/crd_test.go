package k8stest_test

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
)

// TestCRDValidation checks that the API server enforces the schema
// controller-gen generated from the markers in api/v1alpha1.
func TestCRDValidation(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := newCluster(t)
	_, err := c.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "app"}}, metav1.CreateOptions{})
	c.must(err)

	target := func(name string, mod func(*v1alpha1.VolumeTargetSpec)) *v1alpha1.VolumeTarget {
		vt := &v1alpha1.VolumeTarget{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: name},
			Spec: v1alpha1.VolumeTargetSpec{RemoteVolume: "vol", PVC: "p", AllowedIdentities: []string{"a"}}}
		mod(&vt.Spec)
		return vt
	}
	sync := func(name string, mod func(*v1alpha1.VolumeSyncSpec)) *v1alpha1.VolumeSync {
		vs := &v1alpha1.VolumeSync{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: name},
			Spec: v1alpha1.VolumeSyncSpec{SourcePVC: "p", Destination: v1alpha1.Destination{Address: "r:7300", TLSSecretName: "s"}}}
		mod(&vs.Spec)
		return vs
	}
	store := v1alpha1.Store{URL: "s3://replicas/prod", Endpoint: "minio:9000", CredentialsSecretName: "s3"}
	for _, tc := range []struct {
		name string
		obj  interface {
			GetName() string
		}
		want string // "" accepted, else a fragment of the error
	}{
		{"target ok", target("ok", func(*v1alpha1.VolumeTargetSpec) {}), ""},
		{"target longhorn", target("lh", func(s *v1alpha1.VolumeTargetSpec) { s.PVC, s.LonghornVolume = "", "v" }), ""},
		{"target both", target("both", func(s *v1alpha1.VolumeTargetSpec) { s.LonghornVolume = "v" }), "exactly one of pvc and longhornVolume"},
		{"target neither", target("neither", func(s *v1alpha1.VolumeTargetSpec) { s.PVC = "" }), "exactly one of pvc and longhornVolume"},
		{"target nobody", target("nobody", func(s *v1alpha1.VolumeTargetSpec) { s.AllowedIdentities = nil }), "allowedIdentities"},
		{"target bad name", target("badname", func(s *v1alpha1.VolumeTargetSpec) { s.RemoteVolume = "../x" }), "remoteVolume"},
		{"sync ok", sync("ok", func(s *v1alpha1.VolumeSyncSpec) {
			s.Trigger.Interval = &metav1.Duration{Duration: time.Minute}
			s.Trigger.Manual = "1"
		}), ""},
		{"sync no pvc", sync("nopvc", func(s *v1alpha1.VolumeSyncSpec) { s.SourcePVC = "" }), "sourcePVC"},
		{"sync no address", sync("noaddr", func(s *v1alpha1.VolumeSyncSpec) { s.Destination.Address = "" }), "address"},
		{"sync bad volume", sync("badvol", func(s *v1alpha1.VolumeSyncSpec) { s.Destination.VolumeName = "a/b" }), "volumeName"},
		{"sync store", sync("store", func(s *v1alpha1.VolumeSyncSpec) {
			s.Destination = v1alpha1.Destination{Store: &store, VolumeName: "vol"}
		}), ""},
		{"sync store and address", sync("storeaddr", func(s *v1alpha1.VolumeSyncSpec) { s.Destination.Store = &store }), "either address"},
		{"sync store with tls", sync("storetls", func(s *v1alpha1.VolumeSyncSpec) {
			s.Destination = v1alpha1.Destination{Store: &store, TLSSecretName: "s"}
		}), "tlsSecretName goes with address"},
		{"sync address without tls", sync("notls", func(s *v1alpha1.VolumeSyncSpec) { s.Destination.TLSSecretName = "" }), "tlsSecretName goes with address"},
		{"sync store bad url", sync("storeurl", func(s *v1alpha1.VolumeSyncSpec) {
			bad := store
			bad.URL = "http://bucket/x"
			s.Destination = v1alpha1.Destination{Store: &bad}
		}), "url"},
		{"sync store no credentials", sync("storecreds", func(s *v1alpha1.VolumeSyncSpec) {
			bad := store
			bad.CredentialsSecretName = ""
			s.Destination = v1alpha1.Destination{Store: &bad}
		}), "credentialsSecretName"},
		{"target store", target("store", func(s *v1alpha1.VolumeTargetSpec) {
			s.AllowedIdentities, s.Store = nil, &v1alpha1.StoreSource{Store: store, PollInterval: &metav1.Duration{Duration: 10 * time.Second}}
		}), ""},
		{"target store and identities", target("storeids", func(s *v1alpha1.VolumeTargetSpec) {
			s.Store = &v1alpha1.StoreSource{Store: store}
		}), "either allowedIdentities"},
	} {
		var err error
		switch o := tc.obj.(type) {
		case *v1alpha1.VolumeTarget:
			err = c.cl.Create(ctx, o)
		case *v1alpha1.VolumeSync:
			err = c.cl.Create(ctx, o)
		}
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: rejected: %v", tc.name, err)
		case tc.want != "" && err == nil:
			t.Errorf("%s: accepted", tc.name)
		case tc.want != "" && !strings.Contains(err.Error(), tc.want):
			t.Errorf("%s: error %q does not mention %q", tc.name, err, tc.want)
		}
	}
}
