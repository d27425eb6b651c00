package k8sagent

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/pki"
)

func gauge(t *testing.T, v *prometheus.GaugeVec, labels ...string) float64 {
	t.Helper()
	return testutil.ToFloat64(v.WithLabelValues(labels...))
}

// TestMetricsFromStatus: the status gauges follow the VolumeSync's status,
// and the replica's lag counts from the start of the last committed round
// as the status records it (so it survives a restart of the agent).
func TestMetricsFromStatus(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	m.lag.now = func() time.Time { return now }
	vs := &v1alpha1.VolumeSync{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "db"}}
	vs.Status.Phase, vs.Status.ConsecutiveFailures = v1alpha1.PhaseDegraded, 3
	m.status(vs)
	if f, d := gauge(t, m.failures, "ns", "db"), gauge(t, m.degraded, "ns", "db"); f != 3 || d != 1 {
		t.Errorf("before any commit: consecutive_failures %v, degraded %v; want 3, 1", f, d)
	}
	if n := testutil.CollectAndCount(m.lag) + testutil.CollectAndCount(m.interval); n != 0 {
		t.Errorf("%d lag or interval series before any commit, for a VolumeSync without a schedule", n)
	}
	vs.Spec.Trigger.Interval = &metav1.Duration{Duration: time.Hour}
	m.status(vs)
	if v := gauge(t, m.interval, "ns", "db"); v != 3600 {
		t.Errorf("sync_interval_seconds = %v, want 3600", v)
	}
	vs.Spec.Paused = true
	m.status(vs)
	if n := testutil.CollectAndCount(m.interval); n != 0 {
		t.Errorf("a paused VolumeSync has %d interval series, want none", n)
	}

	end := metav1.NewMicroTime(now.Add(-10 * time.Minute))
	vs.Status = v1alpha1.VolumeSyncStatus{Phase: v1alpha1.PhaseIdle, LastSyncTime: &end, LastGeneration: 7, LastSourceBytes: 1 << 30,
		LastSyncDuration: &metav1.Duration{Duration: 2 * time.Minute}, LastSnapshotDuration: &metav1.Duration{Duration: 30 * time.Second}}
	m.status(vs)
	for name, c := range map[string]struct{ got, want float64 }{
		"consecutive_failures":             {gauge(t, m.failures, "ns", "db"), 0},
		"degraded":                         {gauge(t, m.degraded, "ns", "db"), 0},
		"generation":                       {gauge(t, m.generation, "ns", "db"), 7},
		"source_bytes":                     {gauge(t, m.sourceBytes, "ns", "db"), 1 << 30},
		"last_round_duration_seconds":      {gauge(t, m.lastDuration, "ns", "db"), 120},
		"last_round_snapshot_wait_seconds": {gauge(t, m.snapshotWait, "ns", "db"), 30},
		"last_success_timestamp_seconds":   {gauge(t, m.lastOK, "ns", "db"), float64(end.Unix())},
		"replica_lag_seconds (12 min: 10 since the commit, 2 of the round)": {testutil.ToFloat64(m.lag), 12 * 60},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", name, c.got, c.want)
		}
	}

	// A second Metrics in the same registry reports through the first.
	m2, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	if m2.lag != m.lag || m2.degraded != m.degraded {
		t.Error("a second Metrics in the registry does not share the first's collectors")
	}
	m2.forget("ns", "db")
	if n := testutil.CollectAndCount(m.lag) + testutil.CollectAndCount(m.degraded); n != 0 {
		t.Errorf("forget left %d series", n)
	}
}

// TestMetricsCertificate: the expiry of the client certificate a round
// loaded, from its tls.Config as TLSFromSecret builds it.
func TestMetricsCertificate(t *testing.T) {
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue("agent", nil, 90*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(leaf.CertPEM, leaf.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	m.certificate("ns", "db", &tls.Config{Certificates: []tls.Certificate{cert}})
	want := float64(cert.Leaf.NotAfter.Unix())
	if got := gauge(t, m.certExpiry, "ns", "db"); got != want {
		t.Errorf("certificate_expiry_timestamp_seconds = %v, want %v", got, want)
	}
	cert.Leaf = nil // parsed from the DER when not loaded
	m.certificate("ns", "db2", &tls.Config{Certificates: []tls.Certificate{cert}})
	if got := gauge(t, m.certExpiry, "ns", "db2"); got != want {
		t.Errorf("without Leaf: certificate_expiry_timestamp_seconds = %v, want %v", got, want)
	}
	var nilM *Metrics
	nilM.certificate("ns", "db", nil)
	nilM.status(&v1alpha1.VolumeSync{})
}
