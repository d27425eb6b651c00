package k8sagent

import (
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
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

	mu       sync.Mutex
	snapTime map[[2]string]time.Time
	now      func() time.Time
	lagDesc  *prometheus.Desc
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
		snapTime: make(map[[2]string]time.Time),
		now:      time.Now,
		lagDesc: prometheus.NewDesc("voldelta_agent_replica_lag_seconds",
			"Age of the data the replica holds: now minus the start of the last committed round.", l, nil),
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
	// The lag is computed from this Metrics; a second one in the same
	// registry (tests) reports through the first.
	if _, err = register(reg, prometheus.Collector(lagCollector{m})); err != nil {
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
	m.mu.Lock()
	m.snapTime[[2]string{ns, name}] = start
	m.mu.Unlock()
}

// scan records how a committed round scanned, and a hint check that failed.
func (m *Metrics) scan(ns, name, mode string, read uint64, source, check string) {
	if m == nil || mode == "" {
		return
	}
	m.scans.WithLabelValues(ns, name, mode).Inc()
	m.readBytes.WithLabelValues(ns, name).Add(float64(read))
	if check == "mismatch" {
		m.mismatches.WithLabelValues(ns, name, source).Inc()
	}
}

func (m *Metrics) failure(ns, name string) {
	if m == nil {
		return
	}
	m.rounds.WithLabelValues(ns, name, "failure").Inc()
}

// forget drops a deleted VolumeSync's series.
func (m *Metrics) forget(ns, name string) {
	if m == nil {
		return
	}
	for _, v := range []interface {
		DeletePartialMatch(prometheus.Labels) int
	}{m.rounds, m.bytesSent, m.wireBytes, m.duration, m.generation, m.lastOK, m.scans, m.readBytes, m.mismatches} {
		v.DeletePartialMatch(prometheus.Labels{"namespace": ns, "volumesync": name})
	}
	m.mu.Lock()
	delete(m.snapTime, [2]string{ns, name})
	m.mu.Unlock()
}

type lagCollector struct{ m *Metrics }

func (c lagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.m.lagDesc }

func (c lagCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.mu.Lock()
	defer c.m.mu.Unlock()
	now := c.m.now()
	for k, t := range c.m.snapTime {
		ch <- prometheus.MustNewConstMetric(c.m.lagDesc, prometheus.GaugeValue, now.Sub(t).Seconds(), k[0], k[1])
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
