package k8sreceiver

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/pki"
	"github.com/voldelta/voldelta/transport"
)

// TestMetricsTargetAndPull: the degraded gauge follows the VolumeTarget's
// phase and goes with it; a pull is marked running until it ends and its
// downloaded bytes count as they arrive; failures count by reason.
func TestMetricsTargetAndPull(t *testing.T) {
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	vt := &v1alpha1.VolumeTarget{ObjectMeta: metav1.ObjectMeta{Namespace: "dst", Name: "replica"},
		Spec: v1alpha1.VolumeTargetSpec{RemoteVolume: "src-db"}}
	vt.Status.Phase = v1alpha1.PhaseDegraded
	m.target(vt)
	if v := testutil.ToFloat64(m.degraded.WithLabelValues("dst", "replica", "src-db")); v != 1 {
		t.Errorf("degraded = %v while Degraded, want 1", v)
	}
	vt.Status.Phase = v1alpha1.PhaseIdle
	m.target(vt)
	if v := testutil.ToFloat64(m.degraded.WithLabelValues("dst", "replica", "src-db")); v != 0 {
		t.Errorf("degraded = %v while Idle, want 0", v)
	}
	m.forget("dst", "replica")
	if n := testutil.CollectAndCount(m.degraded); n != 0 {
		t.Errorf("forget left %d degraded series", n)
	}
	if n := testutil.CollectAndCount(m.pullFailures) + testutil.CollectAndCount(m.pulling); n != 0 {
		t.Errorf("a target agents write has %d pull series", n)
	}
	vt.Spec.Store = &v1alpha1.StoreSource{}
	m.target(vt)
	if n := testutil.CollectAndCount(m.pullFailures); n != len(pullFailureReasons) {
		t.Errorf("a store target has %d pull failure series at 0, want one per reason (%d)", n, len(pullFailureReasons))
	}
	if n := testutil.CollectAndCount(m.pulling) + testutil.CollectAndCount(m.pullBytes); n != 2 {
		t.Errorf("a store target has %d pulling and downloaded series, want 2 at 0", n)
	}

	downloaded, ended := m.pullStarted("src-db")
	if v := testutil.ToFloat64(m.pulling.WithLabelValues("src-db")); v != 1 {
		t.Errorf("pulling = %v during a pull, want 1", v)
	}
	downloaded(1000)
	downloaded(24)
	if v := testutil.ToFloat64(m.pullBytes.WithLabelValues("src-db")); v != 1024 {
		t.Errorf("pull_downloaded_bytes_total = %v during the pull, want 1024", v)
	}
	ended()
	if v := testutil.ToFloat64(m.pulling.WithLabelValues("src-db")); v != 0 {
		t.Errorf("pulling = %v after the pull, want 0", v)
	}
	m.pullFailed("src-db", v1alpha1.ReasonStoreUnavailable)
	m.pullFailed("src-db", v1alpha1.ReasonStoreUnavailable)
	if v := testutil.ToFloat64(m.pullFailures.WithLabelValues("src-db", v1alpha1.ReasonStoreUnavailable)); v != 2 {
		t.Errorf("pull_failures_total = %v, want 2", v)
	}

	var nilM *Metrics // a Targets without metrics
	d, e := nilM.pullStarted("v")
	if d != nil {
		t.Error("no metrics: pullStarted returned a counting function")
	}
	e()
	nilM.target(vt)
	nilM.forget("dst", "replica")
}

// TestMetricsCertificate: the serving certificate's expiry, from the
// receiver's transport configuration; none without TLS.
func TestMetricsCertificate(t *testing.T) {
	ca, err := pki.NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue("receiver", []string{"127.0.0.1"}, 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(leaf.CertPEM, leaf.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	m.certificate(nil) // --insecure, or no --listen
	if n := testutil.CollectAndCount(m.certExpiry); n != 0 {
		t.Errorf("without TLS: %d certificate_expiry_timestamp_seconds series, want none", n)
	}
	m.certificate(transport.NewTLS(cert, ca.Pool(), true))
	if v, want := testutil.ToFloat64(m.certExpiry), float64(cert.Leaf.NotAfter.Unix()); v != want {
		t.Errorf("certificate_expiry_timestamp_seconds = %v, want %v", v, want)
	}
}
