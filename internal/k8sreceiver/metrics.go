package k8sreceiver

import (
	"errors"
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
	var err error
	for _, v := range []**prometheus.CounterVec{&m.commits, &m.fetched, &m.copied, &m.refused} {
		if *v, err = register(reg, *v); err != nil {
			return nil, err
		}
	}
	for _, v := range []**prometheus.GaugeVec{&m.generation, &m.lastCommit, &m.incomplete} {
		if *v, err = register(reg, *v); err != nil {
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
