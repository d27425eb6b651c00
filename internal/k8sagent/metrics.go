package k8sagent

import (
	"crypto/tls"
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/k8sutil"
)

// Metrics are the agent's Prometheus metrics, labelled by the VolumeSync's
// namespace and name.
type Metrics struct {
	rounds     *prometheus.CounterVec
	bytesSent  *prometheus.CounterVec
	wireBytes  *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	generation *prometheus.GaugeVec
	lastOK     *prometheus.GaugeVec
	scans      *prometheus.CounterVec
	readBytes  *prometheus.CounterVec
	mismatches *prometheus.CounterVec

	// From the VolumeSync's status, after every status update.
	failures     *prometheus.GaugeVec
	degraded     *prometheus.GaugeVec
	snapshotWait *prometheus.GaugeVec
	lastDuration *prometheus.GaugeVec
	sourceBytes  *prometheus.GaugeVec
	interval     *prometheus.GaugeVec
	// From the TLS Secret of a round to a receiver.
	certExpiry *prometheus.GaugeVec

	lag *lagCollector
}

// NewMetrics registers the agent's metrics with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	l := []string{"namespace", "volumesync"}
	m := &Metrics{
		rounds: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "voldelta_agent_rounds_total",
			Help: "Sync rounds run, by result (success, failure)."}, append(l, "result")),
		bytesSent: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "voldelta_agent_sent_bytes_total",
			Help: "Uncompressed bytes of the chunks sent by committed rounds."}, l),
		wireBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "voldelta_agent_wire_bytes_total",
			Help: "Bytes written to the network by committed rounds (TLS, framing, manifest included; a round sharing its group's session counts the frames of its own streams, without TLS and yamux framing)."}, l),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "voldelta_agent_round_duration_seconds",
			Help: "Duration of committed rounds, snapshot included.", Buckets: prometheus.ExponentialBuckets(1, 2, 16)}, l),
		generation: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "voldelta_agent_generation",
			Help: "Receiver generation committed by the last successful round."}, l),
		lastOK: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "voldelta_agent_last_success_timestamp_seconds",
			Help: "Unix time of the last successful round's commit."}, l),
		scans: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "voldelta_agent_scans_total",
			Help: "Committed rounds by how the snapshot was scanned (mode: incremental, full)."}, append(l, "mode")),
		readBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "voldelta_agent_read_bytes_total",
			Help: "Bytes of snapshots read by committed rounds' scans."}, l),
		mismatches: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "voldelta_agent_hint_mismatches_total",
			Help: "Periodic full scans that found a change the hints missed (the hint source is then distrusted for the volume)."}, append(l, "source")),
		failures: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "voldelta_agent_consecutive_failures",
			Help: "Failed attempts since the last successful round (status.consecutiveFailures)."}, l),
		degraded: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "voldelta_agent_degraded",
			Help: "1 while the VolumeSync's phase is Degraded (its last attempt failed, or its source or spec is unusable), else 0."}, l),
		snapshotWait: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "voldelta_agent_last_round_snapshot_wait_seconds",
			Help: "How long the last successful round waited for its VolumeSnapshot (status.lastSnapshotDuration)."}, l),
		lastDuration: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "voldelta_agent_last_round_duration_seconds",
			Help: "How long the last successful round took, snapshot wait included (status.lastSyncDuration)."}, l),
		sourceBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "voldelta_agent_source_bytes",
			Help: "Size of the volume in the last successful round (status.lastSourceBytes)."}, l),
		interval: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "voldelta_agent_sync_interval_seconds",
			Help: "spec.trigger.interval of a VolumeSync that runs on a schedule and is not paused; absent otherwise (the RPO alert's reference)."}, l),
		certExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "voldelta_agent_certificate_expiry_timestamp_seconds",
			Help: "Unix time at which the client certificate of the VolumeSync's TLS Secret expires (its NotAfter), as last loaded for a round."}, l),
		lag: &lagCollector{snapTime: make(map[[2]string]time.Time), now: time.Now,
			desc: prometheus.NewDesc("voldelta_agent_replica_lag_seconds",
				"Age of the data the replica holds: now minus the start of the last committed round.", l, nil)},
	}
	var err error
	if m.rounds, err = register(reg, m.rounds); err != nil {
		return nil, err
	}
	if m.bytesSent, err = register(reg, m.bytesSent); err != nil {
		return nil, err
	}
	if m.wireBytes, err = register(reg, m.wireBytes); err != nil {
		return nil, err
	}
	if m.duration, err = register(reg, m.duration); err != nil {
		return nil, err
	}
	if m.generation, err = register(reg, m.generation); err != nil {
		return nil, err
	}
	if m.lastOK, err = register(reg, m.lastOK); err != nil {
		return nil, err
	}
	if m.scans, err = register(reg, m.scans); err != nil {
		return nil, err
	}
	if m.readBytes, err = register(reg, m.readBytes); err != nil {
		return nil, err
	}
	if m.mismatches, err = register(reg, m.mismatches); err != nil {
		return nil, err
	}
	for _, v := range []**prometheus.GaugeVec{&m.failures, &m.degraded, &m.snapshotWait, &m.lastDuration, &m.sourceBytes, &m.interval, &m.certExpiry} {
		if *v, err = register(reg, *v); err != nil {
			return nil, err
		}
	}
	// A second Metrics in the same registry (tests) shares the first's lag.
	if m.lag, err = register(reg, m.lag); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Metrics) success(ns, name string, start, end time.Time, gen uint64, sent uint64, wire int64) {
	if m == nil {
		return
	}
	m.rounds.WithLabelValues(ns, name, "success").Inc()
	m.bytesSent.WithLabelValues(ns, name).Add(float64(sent))
	m.wireBytes.WithLabelValues(ns, name).Add(float64(wire))
	m.duration.WithLabelValues(ns, name).Observe(end.Sub(start).Seconds())
	m.generation.WithLabelValues(ns, name).Set(float64(gen))
	m.lastOK.WithLabelValues(ns, name).Set(float64(end.UnixNano()) / 1e9)
	m.lag.set(ns, name, start)
}

// scan records how a committed round scanned, and a hint check that failed.
func (m *Metrics) scan(ns, name, mode string, read uint64, source, check string) {
	if m == nil || mode == "" {
		return
	}
	m.scans.WithLabelValues(ns, name, mode).Inc()
	m.readBytes.WithLabelValues(ns, name).Add(float64(read))
	if source == "" {
		return
	}
	// At 0 from the first round that used the source, so that the first
	// mismatch is an increase.
	c := m.mismatches.WithLabelValues(ns, name, source)
	if check == "mismatch" {
		c.Inc()
	}
}

func (m *Metrics) failure(ns, name string) {
	if m == nil {
		return
	}
	m.rounds.WithLabelValues(ns, name, "failure").Inc()
}

// status reports what vs's status says, after the agent wrote it: its
// failures, whether it is Degraded, its schedule and, once a round committed, that
// round's figures (so they survive a restart of the agent: the replica's
// lag counts from the start of the last committed round).
func (m *Metrics) status(vs *v1alpha1.VolumeSync) {
	if m == nil {
		return
	}
	ns, name, st := vs.Namespace, vs.Name, &vs.Status
	// Both results exist from the start, so that the first failure is an
	// increase.
	m.rounds.WithLabelValues(ns, name, "success")
	m.rounds.WithLabelValues(ns, name, "failure")
	m.failures.WithLabelValues(ns, name).Set(float64(st.ConsecutiveFailures))
	m.degraded.WithLabelValues(ns, name).Set(boolValue(st.Phase == v1alpha1.PhaseDegraded))
	if iv := vs.Spec.Trigger.Interval; iv != nil && iv.Duration > 0 && !vs.Spec.Paused {
		m.interval.WithLabelValues(ns, name).Set(iv.Seconds())
	} else {
		m.interval.DeleteLabelValues(ns, name)
	}
	if st.LastSyncTime == nil {
		return
	}
	end := st.LastSyncTime.Time
	m.lastOK.WithLabelValues(ns, name).Set(float64(end.UnixNano()) / 1e9)
	m.generation.WithLabelValues(ns, name).Set(float64(st.LastGeneration))
	m.sourceBytes.WithLabelValues(ns, name).Set(float64(st.LastSourceBytes))
	start := end
	if d := st.LastSyncDuration; d != nil {
		start = end.Add(-d.Duration)
		m.lastDuration.WithLabelValues(ns, name).Set(d.Seconds())
	}
	if d := st.LastSnapshotDuration; d != nil {
		m.snapshotWait.WithLabelValues(ns, name).Set(d.Seconds())
	}
	m.lag.set(ns, name, start)
}

// certificate reports when the client certificate a round to a receiver
// loaded from vs's TLS Secret expires.
func (m *Metrics) certificate(ns, name string, cfg *tls.Config) {
	if m == nil {
		return
	}
	if t, ok := k8sutil.CertificateExpiry(cfg); ok {
		m.certExpiry.WithLabelValues(ns, name).Set(float64(t.Unix()))
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// forget drops a deleted VolumeSync's series.
func (m *Metrics) forget(ns, name string) {
	if m == nil {
		return
	}
	for _, v := range []interface {
		DeletePartialMatch(prometheus.Labels) int
	}{m.rounds, m.bytesSent, m.wireBytes, m.duration, m.generation, m.lastOK, m.scans, m.readBytes, m.mismatches,
		m.failures, m.degraded, m.snapshotWait, m.lastDuration, m.sourceBytes, m.interval, m.certExpiry} {
		v.DeletePartialMatch(prometheus.Labels{"namespace": ns, "volumesync": name})
	}
	m.lag.forget(ns, name)
}

// lagCollector reports each VolumeSync's replica lag, computed when
// scraped from the start of its last committed round.
type lagCollector struct {
	desc     *prometheus.Desc
	now      func() time.Time
	mu       sync.Mutex
	snapTime map[[2]string]time.Time
}

func (c *lagCollector) set(ns, name string, start time.Time) {
	c.mu.Lock()
	c.snapTime[[2]string{ns, name}] = start
	c.mu.Unlock()
}

func (c *lagCollector) forget(ns, name string) {
	c.mu.Lock()
	delete(c.snapTime, [2]string{ns, name})
	c.mu.Unlock()
}

func (c *lagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *lagCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	for k, t := range c.snapTime {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, now.Sub(t).Seconds(), k[0], k[1])
	}
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
