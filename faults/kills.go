package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// phase is a window of a measured round, relative to the start of send.
type phase struct {
	name     string
	from, to time.Duration
}

// measurePhases runs one unbroken round and cuts it into phases from the
// receiver's and the agent's log lines.
func (e *Env) measurePhases(r *Receiver, addr, src, vol, copiesName string) ([]phase, SendResult) {
	logStart := len(r.Log())
	s, err := e.StartSend(addr, src, vol)
	if err != nil {
		return nil, SendResult{Err: err}
	}
	t0 := s.start
	res := s.Wait(2 * time.Minute)
	time.Sleep(50 * time.Millisecond)
	rlog := r.Log()[logStart:]
	at := func(ts []time.Time, def time.Duration) time.Duration {
		if len(ts) == 0 {
			return def
		}
		return ts[len(ts)-1].Sub(t0)
	}
	total := res.Dur
	tA := at(logTimes(rlog, "apply started"), total/10)
	tS := at(logTimes(res.Stderr, "scan done"), total/2)
	tV := at(logTimes(rlog, "verified"), total*9/10)
	took, _ := time.ParseDuration(logField(rlog, "verified", "took"))
	tVs := tV - took
	tC := at(logTimes(rlog, "generation committed"), total)
	raw := []phase{
		{"startup/handshake/index", 0, tA},
		{"scan+manifest+chunks", tA, tS},
		{copiesName, tS, tVs},
		{"verify", tVs, tV},
		{"commit", tV, tC + 5*time.Millisecond},
	}
	var out []phase
	for _, p := range raw {
		if p.to <= p.from {
			p.to = p.from + 5*time.Millisecond
		}
		out = append(out, p)
	}
	return out, res
}

func fmtPhases(ps []phase) string {
	var b []string
	for _, p := range ps {
		b = append(b, fmt.Sprintf("%s %.0f-%.0fms", p.name, p.from.Seconds()*1000, p.to.Seconds()*1000))
	}
	return strings.Join(b, ", ")
}

// CaseKills SIGKILLs one side ("receiver" or "agent") of n rounds, first
// and delta rounds alternately, each at a random point within a phase
// (phases cycled, so every phase is hit), and checks after each kill that
// status is not current while the target is torn and that a re-run of
// send ends byte-identical and current.
func (e *Env) CaseKills(ctx context.Context, side string, n int) Result {
	res := Result{
		Case:     fmt.Sprintf("SIGKILL %s ×%d (first+delta rounds)", side, n),
		Expected: "after each kill: status not current unless the target holds that generation's bytes; re-run of send: exit 0, target == source, status current",
		Verdict:  "PASS",
	}
	dir := e.caseDir("kill-" + side)
	size := e.SizeMiB * MiB
	v0 := volumeV0(e.Seed, size)
	v1 := volumeV1(e.Seed, v0)
	src := [2]string{filepath.Join(dir, "v0.img"), filepath.Join(dir, "v1.img")}
	if err := writeFile(src[0], v0); err != nil {
		res.failf("setup: %v", err)
		return res
	}
	if err := writeFile(src[1], v1); err != nil {
		res.failf("setup: %v", err)
		return res
	}
	v0, v1 = nil, nil
	target, state, vol := filepath.Join(dir, "target.img"), filepath.Join(dir, "state"), "vol"
	addr := freeAddr()
	r, err := e.StartReceiver(addr, state, []string{vol + "=" + target})
	if err != nil {
		res.failf("receiver: %v", err)
		return res
	}
	defer r.Kill()

	// Reference rounds: a first round of v0 and a delta to v1, measured
	// twice (the second with warm caches, as the killed rounds run).
	var firstPh, deltaPh []phase
	var fr, dr SendResult
	for pass := 0; pass < 2; pass++ {
		if pass > 0 {
			r.Kill()
			os.RemoveAll(state)
			os.Remove(target)
			if err := r.Restart(); err != nil {
				res.failf("restart receiver: %v", err)
				return res
			}
		}
		firstPh, fr = e.measurePhases(r, addr, src[0], vol, "chunks/writes")
		if fr.Code != 0 || fr.Err != nil {
			res.failf("reference first round: %s", fr)
			return res
		}
		deltaPh, dr = e.measurePhases(r, addr, src[1], vol, "local copies+chunks")
		if dr.Code != 0 || dr.Err != nil {
			res.failf("reference delta round: %s", dr)
			return res
		}
	}
	// scale shrinks a kind's windows whenever a killed round of that kind
	// ended before its kill (the reference was slower than the round).
	scale := map[string]float64{"first": 1, "delta": 1}
	rng0 := e.rand()
	// a random first phase per kind (the quick subset kills once per side)
	next := map[string]int{"first": rng0.IntN(len(firstPh)), "delta": rng0.IntN(len(deltaPh))}
	res.detail("first round %.2fs: %s", fr.Dur.Seconds(), fmtPhases(firstPh))
	res.detail("delta round %.2fs (copied %v, sent %v): %s", dr.Dur.Seconds(), dr.Stats["chunks_copied"], dr.Stats["chunks_sent"], fmtPhases(deltaPh))
	cur := 1 // the version the target holds (committed)

	hits := map[string]int{}
	firstFail := ""
	var torn, resumeFail, killedCommitted int
	rng := e.rand()
	for i := 0; i < n; i++ {
		if ctx.Err() != nil {
			res.failf("interrupted")
			return res
		}
		kind := "delta"
		ph := deltaPh
		if i%2 == 0 {
			kind, ph = "first", firstPh
		}
		// Phases cycle per kind; a kill that came after its round had
		// ended aims at the same phase again (with the windows shrunk).
		p := ph[next[kind]%len(ph)]
		delay := p.from + time.Duration(rng.Int64N(int64(p.to-p.from)+1))
		delay = time.Duration(float64(delay) * scale[kind])
		var prevGen uint64
		ver := 0
		if kind == "first" {
			r.Kill()
			os.RemoveAll(state)
			os.Remove(target)
			if err := r.Restart(); err != nil {
				res.failf("restart receiver: %v", err)
				return res
			}
		} else {
			st := e.Status(state, vol)
			prevGen = st.Generation
			ver = 1 - cur
		}
		s, err := e.StartSend(addr, src[ver], vol)
		if err != nil {
			res.failf("send: %v", err)
			return res
		}
		time.Sleep(time.Until(s.start.Add(delay)))
		elapsed := time.Since(s.start)
		finished := s.Done()
		if side == "receiver" {
			r.Kill()
		} else {
			s.Kill()
		}
		sr := s.Wait(2 * time.Minute)
		if finished {
			hits["after the round ended"]++
			scale[kind] *= 0.8
		} else {
			next[kind]++
			hits[p.name]++
		}
		if side == "agent" {
			time.Sleep(300 * time.Millisecond) // let the receiver see the agent go
		}
		// The receiver may still be ending its round (agent kills): take
		// status, compare, and take status again; only a stable answer counts.
		st := e.Status(state, vol)
		line := fmt.Sprintf("#%d %s aim=%s (scale %.2f) at %.0fms: killed round %s; status after kill: %s", i+1, kind, p.name, scale[kind], elapsed.Seconds()*1000, sendShort(sr), st)
		if st.Current {
			want := -1
			switch {
			case kind == "delta" && st.Generation == prevGen:
				want = cur
			case st.Generation == prevGen+1:
				want = ver
				killedCommitted++
			}
			if want < 0 {
				torn++
				res.DataLost = true
				line += fmt.Sprintf(" — FAIL: current at unexpected generation %d (before: %d)", st.Generation, prevGen)
			} else if ok, why := sameBytes(target, src[want], false); !ok {
				st2 := e.Status(state, vol)
				if st2.Current && st2.Generation == st.Generation {
					torn++
					res.DataLost = true
					line += fmt.Sprintf(" — FAIL: current (gen %d) while torn: %s", st.Generation, why)
				} else {
					line += fmt.Sprintf(" (status moved on to %s)", st2)
				}
			}
		}
		if side == "receiver" {
			if err := r.Restart(); err != nil {
				res.failf("restart receiver after kill #%d: %v", i+1, err)
				return res
			}
		}
		rr := e.SendRetry(addr, src[ver], vol, 3*time.Minute)
		ok, why := sameBytes(target, src[ver], false)
		st = e.Status(state, vol)
		line += fmt.Sprintf("; re-run: %s", sendShort(rr))
		switch {
		case rr.Code != 0 || rr.Err != nil:
			resumeFail++
			line += " — FAIL: re-run failed"
		case !ok:
			resumeFail++
			res.DataLost = true
			line += " — FAIL: re-run committed but target differs: " + why
		case !st.Current:
			resumeFail++
			line += " — FAIL: status after re-run: " + st.String()
		default:
			line += fmt.Sprintf(", identical, current gen %d", st.Generation)
			cur = ver
		}
		if rr.Code != 0 || !ok {
			// get back to a known state for the next kill
			cur = ver
			if !ok {
				r.Kill()
				os.RemoveAll(state)
				os.Remove(target)
				r.Restart()
				e.SendRetry(addr, src[ver], vol, 3*time.Minute)
			}
		}
		if strings.Contains(line, "FAIL") && firstFail == "" {
			firstFail = line
		}
		res.detail("%s", line)
		if e.Verbose {
			e.logf("%s", line)
		}
	}
	var hs []string
	for k, v := range hits {
		hs = append(hs, k+" "+strconv.Itoa(v))
	}
	sort.Strings(hs)
	res.Observed = fmt.Sprintf("%d kills (%s); %d killed rounds had committed; %d current while torn; %d re-runs not identical+current", n, strings.Join(hs, ", "), killedCommitted, torn, resumeFail)
	if torn > 0 || resumeFail > 0 {
		res.Verdict = "FAIL"
		res.addObs("first failure: " + firstFail)
	}
	return res
}

func sendShort(s SendResult) string {
	if s.Err != nil {
		return s.Err.Error()
	}
	if s.Code == 0 {
		return fmt.Sprintf("exit 0 gen %v", s.Stats["generation"])
	}
	msg := oneLine(s.Stderr)
	if len(msg) > 300 {
		msg = msg[:300] + "…"
	}
	if msg == "" {
		msg = "(no message)"
	}
	return fmt.Sprintf("exit %d %q", s.Code, msg)
}
