package k8sutil

import (
	"math"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Rate is done bytes over elapsed, in bytes per second (0 before any time
// passed).
func Rate(done uint64, elapsed time.Duration) float64 {
	if elapsed <= 0 {
		return 0
	}
	return float64(done) / elapsed.Seconds()
}

// ETA is the time left to reach total from done at rate bytes per second,
// rounded to the second; nil when it cannot be estimated (nothing moved
// yet, or the total is not known: known false).
func ETA(done, total uint64, rate float64, known bool) *metav1.Duration {
	switch {
	case !known:
		return nil
	case done >= total:
		return &metav1.Duration{}
	case rate <= 0:
		return nil
	}
	secs := math.Ceil(float64(total-done) / rate)
	return &metav1.Duration{Duration: time.Duration(secs) * time.Second}
}
