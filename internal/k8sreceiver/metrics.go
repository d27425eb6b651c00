package k8sreceiver

import (
	"github.com/prometheus/client_golang/prometheus"

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
	}
	for _, c := range []prometheus.Collector{m.commits, m.fetched, m.copied, m.generation, m.lastCommit, m.refused, m.incomplete} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
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
