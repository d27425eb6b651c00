package migration

import (
	"context"
	"fmt"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
)

// precopyRound is what the VolumeSyncs are asked for in the current
// pre-copy round.
func precopyRound(m *v1alpha1.Migration) roundSpec {
	return roundSpec{trigger: m.Status.PrecopyTrigger}
}

// finalRound is what the VolumeSyncs are asked for in the final round:
// its trigger, the group snapshot's members if there is one and, if
// status.group is set, the group to promote.
func finalRound(m *v1alpha1.Migration) roundSpec {
	rs := roundSpec{trigger: m.Status.FinalTrigger, snapshots: finalSnapshots(m)}
	if m.Status.Group != "" {
		rs.group = &v1alpha1.SyncGroup{Name: m.Status.Group, Members: int32(len(m.Status.Volumes)), Promote: true}
	}
	return rs
}

// groupName names the group of a Migration's final rounds:
// <namespace>-<migration>-<first 8 of its uid>, unique per attempt, at
// most 128 characters (a volume name).
func groupName(m *v1alpha1.Migration) string {
	uid := strings.ReplaceAll(string(m.UID), "-", "")
	if len(uid) > 8 {
		uid = uid[:8]
	}
	prefix := m.Namespace + "-" + m.Name
	if limit := 128 - 1 - len(uid); len(prefix) > limit {
		prefix = prefix[:limit]
	}
	return prefix + "-" + uid
}

// precopyTrigger is the manual trigger of pre-copy round n.
func precopyTrigger(m *v1alpha1.Migration, n int32) string {
	return fmt.Sprintf("%s-precopy-%d", m.Name, n)
}

// roundRecorded says whether the round of status.precopyTrigger is in the
// history already (then the next one is due after the interval).
func roundRecorded(m *v1alpha1.Migration) bool {
	h := m.Status.History
	return len(h) > 0 && h[len(h)-1].Trigger == m.Status.PrecopyTrigger
}

// finishRound records the current pre-copy round if every member
// committed it, and reports whether it did; if not, the message says what
// it waits for.
func (r *Reconciler) finishRound(m *v1alpha1.Migration, members []member, now time.Time) bool {
	trigger := m.Status.PrecopyTrigger
	n := m.Status.Rounds + 1
	waiting, degraded := progress(members, trigger)
	if len(waiting) > 0 {
		msg := fmt.Sprintf("pre-copy round %d: waiting for %s", n, strings.Join(waiting, ", "))
		if len(degraded) > 0 {
			msg += "; failing, retried by the agent: " + strings.Join(degraded, "; ")
		}
		m.Status.Message = msg
		return false
	}
	start := now
	if m.Status.PrecopyStartTime != nil {
		start = m.Status.PrecopyStartTime.Time
	}
	round := v1alpha1.PrecopyRound{Round: n, Trigger: trigger, StartTime: metav1.NewTime(start), EndTime: metav1.NewTime(now)}
	for _, mb := range members {
		st := mb.vs.Status
		rv := v1alpha1.RoundVolume{PVC: mb.vol.PVC, SentBytes: st.LastBytesSent, WireBytes: st.LastWireBytes, Generation: st.LastGeneration}
		if st.LastSyncDuration != nil {
			rv.Duration = *st.LastSyncDuration
		}
		round.SentBytes += rv.SentBytes
		round.Volumes = append(round.Volumes, rv)
	}
	m.Status.Rounds = n
	m.Status.History = append(m.Status.History, round)
	if k := len(m.Status.History) - HistoryLimit; k > 0 {
		m.Status.History = append([]v1alpha1.PrecopyRound(nil), m.Status.History[k:]...)
	}
	m.Status.LastDeltaBytes = round.SentBytes
	// The volumes' rounds run concurrently: the final round is expected to
	// cost what this one did, plus the wait for the workloads if it was
	// measured.
	predicted := max(now.Sub(start), 0)
	if d := m.Status.Downtime; d != nil {
		predicted += d.Quiesce.Duration
	}
	m.Status.PredictedDowntime = &metav1.Duration{Duration: predicted.Round(time.Millisecond)}
	m.Status.Message = fmt.Sprintf("pre-copy round %d sent %s in %s", n, bytesString(round.SentBytes), predicted.Round(time.Millisecond))
	return true
}

// nextRound starts the next pre-copy round once spec.precopy.interval has
// passed since the last one ended, and returns when to look again.
func (r *Reconciler) nextRound(ctx context.Context, m *v1alpha1.Migration, members []member, now time.Time) (time.Duration, error) {
	var interval time.Duration
	if iv := m.Spec.Precopy.Interval; iv != nil {
		interval = iv.Duration
	}
	if h := m.Status.History; len(h) > 0 {
		if due := h[len(h)-1].EndTime.Add(interval); now.Before(due) {
			last := h[len(h)-1]
			m.Status.Message = fmt.Sprintf("pre-copy round %d sent %s; round %d starts at %s",
				last.Round, bytesString(last.SentBytes), m.Status.Rounds+1, due.UTC().Format(time.RFC3339))
			return due.Sub(now), nil
		}
	}
	trigger := precopyTrigger(m, m.Status.Rounds+1)
	for _, mb := range members {
		if err := r.setRound(ctx, mb.vs, roundSpec{trigger: trigger}); err != nil {
			return 0, err
		}
	}
	m.Status.PrecopyTrigger = trigger
	m.Status.PrecopyStartTime = mtime(now)
	m.Status.Message = fmt.Sprintf("pre-copy round %d runs", m.Status.Rounds+1)
	return r.o.RequeueInterval, nil
}

// converged says whether the last recorded round makes the migration
// ready for the cutover, why (a condition reason) and a message.
func converged(m *v1alpha1.Migration) (reason, msg string, ok bool) {
	p := m.Spec.Precopy
	bytes, dur := p.ConvergedBelowBytes, p.ConvergedBelowDuration
	if bytes == nil && dur == nil {
		bytes = resource.NewQuantity(DefaultConvergedBelowBytes, resource.BinarySI)
	}
	n, sent := m.Status.Rounds, m.Status.LastDeltaBytes
	if bytes != nil && sent < bytes.Value() {
		return ReasonConverged, fmt.Sprintf("converged: round %d sent %s, under %s", n, bytesString(sent), bytes), true
	}
	if pd := m.Status.PredictedDowntime; dur != nil && pd != nil && pd.Duration < dur.Duration {
		return ReasonConverged, fmt.Sprintf("converged: predicted downtime %s after round %d, under %s", pd.Duration, n, dur.Duration), true
	}
	maxRounds := p.MaxRounds
	if maxRounds <= 0 {
		maxRounds = DefaultMaxRounds
	}
	if n >= maxRounds {
		return ReasonMaxRounds, fmt.Sprintf("not converged after %d rounds (the last sent %s): ready, the cutover waits for a request", n, bytesString(sent)), true
	}
	return "", "", false
}

func bytesString(n int64) string {
	return resource.NewQuantity(n, resource.BinarySI).String()
}
