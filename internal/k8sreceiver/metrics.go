package k8sreceiver

import (
	"crypto/tls"
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/k8sutil"
	"github.com/voldelta/voldelta/receiver"
)

// Metrics are the receiver's Prometheus metrics, labelled by remote volume.
type Metrics struct {
	commits    *prometheus.CounterVec
	fetched    *prometheus.CounterVec
	copied     *prometheus.CounterVec
	generation *prometheus.GaugeVec
	lastCommit *prometheus.GaugeVec
	refused    *prometheus.CounterVec
	incomplete *prometheus.GaugeVec
	// By VolumeTarget, from its status after every status update.
	degraded *prometheus.GaugeVec
	// Store targets' pulls.
	pulling      *prometheus.GaugeVec
	pullBytes    *prometheus.CounterVec
	pullFailures *prometheus.CounterVec
	// The serving certificate (a vector without labels, so that a receiver
	// without TLS exports none).
	certExpiry *prometheus.GaugeVec
}

// NewMetrics registers the receiver's metrics with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	l := []string{"volume"}
	m := &Metrics{
		commits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "voldelta_receiver_commits_total",
			Help: "Generations committed (rounds that ended verified)."}, l),
		fetched: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "voldelta_receiver_fetched_bytes_total",
			Help: "Bytes of chunks received from agents and written."}, l),
		copied: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "voldelta_receiver_copied_bytes_total",
			Help: "Bytes copied locally within the target instead of being sent."}, l),
		generation: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "voldelta_receiver_generation",
			Help: "Last committed generation."}, l),
		lastCommit: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "voldelta_receiver_last_commit_timestamp_seconds",
			Help: "Unix time of the last commit."}, l),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "voldelta_receiver_refused_total",
			Help: "Sessions refused, by reason (unknown, unavailable, forbidden)."}, append(l, "reason")),
		incomplete: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "voldelta_receiver_incomplete",
			Help: "1 while the target holds a partly applied round (not a consistent image)."}, l),
		degraded: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "voldelta_receiver_degraded",
			Help: "1 while the VolumeTarget's phase is Degraded (its volume is unavailable, its generation is no longer current, or its pulls fail), else 0."},
			[]string{"namespace", "volumetarget", "volume"}),
		pulling: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "voldelta_receiver_pulling",
			Help: "1 while a pull from the store into the target runs, else 0."}, l),
		pullBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "voldelta_receiver_pull_downloaded_bytes_total",
			Help: "Bytes downloaded from the store by pulls (objects as stored: chunks and manifests), counted as each object arrives."}, l),
		pullFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "voldelta_receiver_pull_failures_total",
			Help: "Failed looks at the store or pulls, by reason (the VolumeTarget's Degraded reason)."}, append(l, "reason")),
		certExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "voldelta_receiver_certificate_expiry_timestamp_seconds",
			Help: "Unix time at which the receiver's serving certificate (--tls-cert, as loaded at start) expires (its NotAfter)."}, nil),
	}
	var err error
	for _, v := range []**prometheus.CounterVec{&m.commits, &m.fetched, &m.copied, &m.refused, &m.pullBytes, &m.pullFailures} {
		if *v, err = register(reg, *v); err != nil {
			return nil, err
		}
	}
	for _, v := range []**prometheus.GaugeVec{&m.generation, &m.lastCommit, &m.incomplete, &m.degraded, &m.pulling, &m.certExpiry} {
		if *v, err = register(reg, *v); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// target reports what vt's status says, after the receiver wrote it.
func (m *Metrics) target(vt *v1alpha1.VolumeTarget) {
	if m == nil {
		return
	}
	v := 0.0
	if vt.Status.Phase == v1alpha1.PhaseDegraded {
		v = 1
	}
	m.degraded.WithLabelValues(vt.Namespace, vt.Name, vt.Spec.RemoteVolume).Set(v)
	if vt.Spec.Store == nil {
		return
	}
	// A store target's pull series exist from its first status, so that
	// the first pull and the first failure of each reason are increases.
	volume := vt.Spec.RemoteVolume
	m.pulling.WithLabelValues(volume)
	m.pullBytes.WithLabelValues(volume)
	for _, r := range pullFailureReasons {
		m.pullFailures.WithLabelValues(volume, r)
	}
}

// pullFailureReasons are the reasons pullFailed is given (pull.go).
var pullFailureReasons = []string{v1alpha1.ReasonStoreUnavailable, v1alpha1.ReasonStoreCredentials,
	v1alpha1.ReasonPullFailed, v1alpha1.ReasonTargetFull, v1alpha1.ReasonTargetState}

// forget drops a deleted VolumeTarget's series.
func (m *Metrics) forget(ns, name string) {
	if m != nil {
		m.degraded.DeletePartialMatch(prometheus.Labels{"namespace": ns, "volumetarget": name})
	}
}

// pullStarted marks a pull of volume as running and returns what counts
// its downloaded bytes (objstore.PullOptions.Downloaded) and what marks
// it ended.
func (m *Metrics) pullStarted(volume string) (downloaded func(n uint64), ended func()) {
	if m == nil {
		return nil, func() {}
	}
	c := m.pullBytes.WithLabelValues(volume)
	g := m.pulling.WithLabelValues(volume)
	g.Set(1)
	return func(n uint64) { c.Add(float64(n)) }, func() { g.Set(0) }
}

func (m *Metrics) pullFailed(volume, reason string) {
	if m != nil {
		m.pullFailures.WithLabelValues(volume, reason).Inc()
	}
}

// certificate reports when the serving certificate of cfg expires.
func (m *Metrics) certificate(cfg *tls.Config) {
	if m == nil {
		return
	}
	if t, ok := k8sutil.CertificateExpiry(cfg); ok {
		m.certExpiry.WithLabelValues().Set(float64(t.Unix()))
	}
}

func (m *Metrics) commit(volume string, r receiver.Result, unix float64) {
	if m == nil {
		return
	}
	m.commits.WithLabelValues(volume).Inc()
	m.fetched.WithLabelValues(volume).Add(float64(r.FetchBytes))
	m.copied.WithLabelValues(volume).Add(float64(r.CopyBytes))
	m.generation.WithLabelValues(volume).Set(float64(r.Generation))
	m.lastCommit.WithLabelValues(volume).Set(unix)
	m.incomplete.WithLabelValues(volume).Set(0)
}

func (m *Metrics) refuse(volume, reason string) {
	if m != nil {
		m.refused.WithLabelValues(volume, reason).Inc()
	}
}

func (m *Metrics) state(volume string, gen int64, incomplete bool) {
	if m == nil {
		return
	}
	m.generation.WithLabelValues(volume).Set(float64(gen))
	v := 0.0
	if incomplete {
		v = 1
	}
	m.incomplete.WithLabelValues(volume).Set(v)
}

// register registers c with reg, or returns the collector registered
// before under the same description (a second manager in one process).
func register[T prometheus.Collector](reg prometheus.Registerer, c T) (T, error) {
	err := reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if ex, ok := are.ExistingCollector.(T); ok {
			return ex, nil
		}
	}
	return c, err
}
