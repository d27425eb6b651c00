package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// rig is a receiver serving one volume and the sources of its rounds.
type rig struct {
	e      *Env
	dir    string
	state  string
	target string
	vol    string
	r      *Receiver
	v0, v1 string // source files
}

// newRig writes sources v0 and v1 (sizeMiB) and starts a receiver whose
// volume "vol" is target ("" = dir/target.img).
func (e *Env) newRig(name, target string, sizeMiB int) (*rig, error) {
	g := &rig{e: e, dir: e.caseDir(name), vol: "vol"}
	g.state = filepath.Join(g.dir, "state")
	g.target = target
	if g.target == "" {
		g.target = filepath.Join(g.dir, "target.img")
	}
	if sizeMiB > 0 {
		a := volumeV0(e.Seed+7, sizeMiB*MiB)
		g.v0, g.v1 = filepath.Join(g.dir, "v0.img"), filepath.Join(g.dir, "v1.img")
		if err := writeFile(g.v0, a); err != nil {
			return nil, err
		}
		if err := writeFile(g.v1, volumeV1(e.Seed+7, a)); err != nil {
			return nil, err
		}
	}
	r, err := e.StartReceiver("", g.state, []string{g.vol + "=" + g.target})
	if err != nil {
		return nil, err
	}
	g.r = r
	return g, nil
}

func (g *rig) send(src string) SendResult {
	return g.e.SendRetry(g.r.Addr, src, g.vol, 3*time.Minute)
}

func (g *rig) status() Status { return g.e.Status(g.state, g.vol) }

// sendOK commits src or says why not.
func (g *rig) sendOK(src string) error {
	r := g.send(src)
	if r.Code != 0 || r.Err != nil {
		return fmt.Errorf("round of %s: %s", filepath.Base(src), r)
	}
	return nil
}

// interrupt starts a round of src, waits until the receiver has started
// applying (status incomplete) plus extra, and then SIGKILLs the receiver
// (and the agent). It reports whether the round was caught mid-apply.
func (g *rig) interrupt(src string, extra time.Duration) (bool, error) {
	s, err := g.e.StartSend(g.r.Addr, src, g.vol)
	if err != nil {
		return false, err
	}
	mid := waitFor(60*time.Second, func() bool { return s.Done() || g.status().Incomplete })
	// Give the journal time to hold records (it is fsynced in batches):
	// up to extra, or until it has more than a header.
	waitFor(extra, func() bool {
		fi, err := os.Stat(filepath.Join(g.state, g.vol, "journal"))
		return s.Done() || (err == nil && fi.Size() > 4096)
	})
	done := s.Done()
	g.r.Kill()
	s.Kill()
	return mid && !done, nil
}

// checkAfter is the common verdict of a round run after a fault: the round
// must commit exactly src (or, when refusal is acceptable, fail without
// reporting current over wrong bytes).
func (g *rig) checkAfter(res *Result, src string, block bool, refusalOK bool) {
	rr := g.send(src)
	ok, why := sameBytes(g.target, src, block)
	st := g.status()
	res.addObs("next round: " + sendShort(rr))
	switch {
	case rr.Code == 0 && rr.Err == nil && !ok:
		res.failf("COMMITTED WITH WRONG BYTES: %s (status: %s)", why, st)
		res.DataLost = true
	case rr.Code == 0 && rr.Err == nil && ok && st.Current:
		res.addObs(fmt.Sprintf("target identical, %s", st))
	case rr.Code == 0:
		res.failf("target identical but status: %s", st)
	default:
		if st.Current && !ok {
			res.failf("status current (%s) while target differs: %s", st, why)
			res.DataLost = true
		} else if !refusalOK {
			res.failf("round failed; target identical: %v", ok)
		}
	}
}

// ---- tampered replicas

// CaseTamperFile overwrites 1 MiB in the middle of a committed file target
// and restores its mtime (touch -d @old): the next round must end with the
// source's bytes.
func (e *Env) CaseTamperFile(ctx context.Context) Result {
	res := Result{Case: "tamper: file target, 1 MiB overwritten, mtime restored", Verdict: "PASS",
		Expected: "status not current and/or the next round detects and repairs: target == source after it"}
	g, err := e.newRig("tamper-file", "", 64)
	if err != nil {
		res.failf("setup: %v", err)
		return res
	}
	if err := g.sendOK(g.v0); err != nil {
		res.failf("%v", err)
		return res
	}
	fi, _ := os.Stat(g.target)
	old := fi.ModTime()
	f, err := os.OpenFile(g.target, os.O_WRONLY, 0)
	if err != nil {
		res.failf("open: %v", err)
		return res
	}
	f.WriteAt(randBytes(e.Seed+99, MiB), fi.Size()/2)
	f.Sync()
	f.Close()
	if _, err := sh("touch", "-m", "-d", fmt.Sprintf("@%d.%09d", old.Unix(), old.Nanosecond()), g.target); err != nil {
		res.failf("touch: %v", err)
		return res
	}
	fi2, _ := os.Stat(g.target)
	res.addObs(fmt.Sprintf("mtime restored: %v; status after tamper: %s", fi2.ModTime().Equal(old), g.status()))
	g.checkAfter(&res, g.v0, false, false)
	return res
}

// CaseTamperBlock overwrites 64 KiB of a loop-device target with dd.
func (e *Env) CaseTamperBlock(ctx context.Context) Result {
	res := Result{Case: "tamper: block device (loop), 64 KiB overwritten with dd", Verdict: "PASS",
		Expected: "status not current and/or the next round detects and repairs: device == source after it"}
	dir := e.caseDir("tamper-block-dev")
	backing := filepath.Join(dir, "backing.img")
	f, err := os.Create(backing)
	if err != nil {
		res.failf("setup: %v", err)
		return res
	}
	f.Truncate(80 * MiB)
	f.Close()
	dev, err := e.attachLoop(backing)
	if err != nil {
		res.failf("losetup: %v", err)
		return res
	}
	g, err := e.newRig("tamper-block", dev, 64)
	if err != nil {
		res.failf("setup: %v", err)
		return res
	}
	if err := g.sendOK(g.v0); err != nil {
		res.failf("%v", err)
		return res
	}
	if ok, why := sameBytes(dev, g.v0, true); !ok {
		res.failf("first round: device differs: %s", why)
	}
	if _, err := sh("dd", "if=/dev/urandom", "of="+dev, "bs=64K", "count=1", fmt.Sprintf("seek=%d", 32*MiB/(64<<10)+3), "oflag=direct", "conv=notrunc", "status=none"); err != nil {
		res.failf("dd: %v", err)
		return res
	}
	res.addObs("status after dd: " + g.status().String())
	g.checkAfter(&res, g.v0, true, false)
	return res
}

// CaseTamperExt4 sends an ext4 image, then mounts the replica read-write,
// writes a file and unmounts it.
func (e *Env) CaseTamperExt4(ctx context.Context) Result {
	res := Result{Case: "tamper: ext4 image target mounted rw, file written, unmounted", Verdict: "PASS",
		Expected: "status not current and/or the next round detects and repairs: target == source after it"}
	g, err := e.newRig("tamper-ext4", "", 0)
	if err != nil {
		res.failf("setup: %v", err)
		return res
	}
	src := filepath.Join(g.dir, "fs.img")
	if err := e.makeExt4(src, 64, func(mnt string) error {
		os.MkdirAll(filepath.Join(mnt, "db"), 0o755)
		for i := range 8 {
			if err := writeFile(filepath.Join(mnt, "db", fmt.Sprintf("table%d.ibd", i)), randBytes(e.Seed+uint64(i), 3*MiB)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		res.failf("make source fs: %v", err)
		return res
	}
	if err := g.sendOK(src); err != nil {
		res.failf("%v", err)
		return res
	}
	// Tamper: mount the replica, write, unmount.
	dev, err := e.attachLoop(g.target)
	if err != nil {
		res.failf("losetup: %v", err)
		return res
	}
	mnt := filepath.Join(g.dir, "mnt-replica")
	if err := e.mount(dev, mnt); err != nil {
		res.failf("mount replica: %v", err)
		return res
	}
	writeFile(filepath.Join(mnt, "intruder.txt"), []byte("written on the replica\n"))
	writeFile(filepath.Join(mnt, "db", "table3.ibd"), randBytes(e.Seed+1234, 256<<10))
	if _, err := sh("umount", mnt); err != nil {
		res.failf("umount: %v", err)
		return res
	}
	detachLoop(dev)
	same, _ := sameBytes(g.target, src, false)
	res.addObs(fmt.Sprintf("replica changed by the mount: %v; status after: %s", !same, g.status()))
	g.checkAfter(&res, src, false, false)
	return res
}

// makeExt4 makes an ext4 image of sizeMiB at path and fills it through a
// loop mount.
func (e *Env) makeExt4(path string, sizeMiB int, fill func(mnt string) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	f.Truncate(int64(sizeMiB) * MiB)
	f.Close()
	if _, err := sh("mkfs.ext4", "-q", "-F", path); err != nil {
		return err
	}
	dev, err := e.attachLoop(path)
	if err != nil {
		return err
	}
	defer detachLoop(dev)
	mnt := path + ".mnt"
	if err := e.mount(dev, mnt); err != nil {
		return err
	}
	ferr := fill(mnt)
	if _, err := sh("umount", mnt); err != nil {
		return err
	}
	return ferr
}

// ---- journal and state

// CaseJournal interrupts a delta round mid-apply (SIGKILL of the
// receiver), then deletes ("lost") or garbles the volume's journal files.
func (e *Env) CaseJournal(ctx context.Context, how string) Result {
	res := Result{Case: "journal " + how + " after an interrupted round", Verdict: "PASS",
		Expected: "never current with wrong bytes; the next round rescans and ends identical and current"}
	g, err := e.newRig("journal-"+how, "", 128)
	if err != nil {
		res.failf("setup: %v", err)
		return res
	}
	if err := g.sendOK(g.v0); err != nil {
		res.failf("%v", err)
		return res
	}
	mid, err := g.interrupt(g.v1, 3*time.Second)
	if err != nil {
		res.failf("interrupt: %v", err)
		return res
	}
	journals, _ := filepath.Glob(filepath.Join(g.state, g.vol, "journal*"))
	var sizes []string
	for _, j := range journals {
		fi, err := os.Stat(j)
		if err != nil {
			continue
		}
		sizes = append(sizes, fmt.Sprintf("%s %dB", filepath.Base(j), fi.Size()))
		switch how {
		case "lost":
			os.Remove(j)
		case "garbled":
			b, _ := os.ReadFile(j)
			if len(b) > 0 {
				m := len(b) / 2
				for i := max(0, m-32); i < min(len(b), m+32); i++ {
					b[i] ^= 0x5a
				}
				os.WriteFile(j, b, 0o644)
			}
		}
	}
	if len(journals) == 0 {
		sizes = append(sizes, "none")
	}
	st := g.status()
	res.addObs(fmt.Sprintf("killed mid-apply: %v; journal files: %s; status: %s", mid, strings.Join(sizes, ", "), st))
	if st.Current {
		want := g.v0
		if st.Generation == 2 {
			want = g.v1
		}
		if ok, why := sameBytes(g.target, want, false); !ok {
			res.failf("status current while torn: %s", why)
			res.DataLost = true
		}
	}
	if err := g.r.Restart(); err != nil {
		res.failf("restart receiver: %v", err)
		return res
	}
	logStart := len(g.r.Log())
	g.checkAfter(&res, g.v1, false, false)
	log := g.r.Log()[logStart:]
	if idx := logField(log, "indexing the target by reading it", "reason"); idx != "" {
		res.addObs("receiver re-indexed the target (" + idx + ")")
	} else if strings.Contains(log, "resuming an interrupted apply") {
		res.addObs("receiver resumed from the journal")
	}
	return res
}

var genRe = regexp.MustCompile(`"generation":\s*(\d+)`)

// CaseState corrupts state.json of a committed volume (garbage, or the
// generation changed by one digit) with the receiver stopped.
func (e *Env) CaseState(ctx context.Context, how string) Result {
	res := Result{Case: "state.json " + how, Verdict: "PASS",
		Expected: "the round is refused with a clear error naming the target state (code 14), not restarted at generation 1; never current with wrong bytes"}
	if how == "generation" {
		res.Case = "state.json: valid JSON, one digit of the generation changed"
	} else {
		res.Case = "state.json: garbage"
	}
	g, err := e.newRig("state-"+how, "", 32)
	if err != nil {
		res.failf("setup: %v", err)
		return res
	}
	for range 2 {
		if err := g.sendOK(g.v0); err != nil {
			res.failf("%v", err)
			return res
		}
	}
	g.r.Stop()
	path := filepath.Join(g.state, g.vol, "state.json")
	b, err := os.ReadFile(path)
	if err != nil {
		res.failf("read state: %v", err)
		return res
	}
	switch how {
	case "garbage":
		bad := randBytes(e.Seed+5, len(b))
		copy(bad, []byte("{\"volume\": \"vol\", \x00\x01"))
		b = bad
	case "generation":
		loc := genRe.FindSubmatchIndex(b)
		if loc == nil {
			res.failf("no generation in state.json")
			return res
		}
		d := loc[3] - 1 // last digit of the first (top-level) generation
		b[d] = '0' + (b[d]-'0'+1)%10
	}
	os.WriteFile(path, b, 0o600)
	st := g.status()
	res.addObs("status: " + st.String())
	if err := g.r.Restart(); err != nil {
		res.addObs("receiver refuses to start: " + oneLine(err.Error()))
		if st.Current {
			res.failf("status still reports current over a corrupt state")
		}
		return res
	}
	rr := g.send(g.v1)
	ok, why := sameBytes(g.target, g.v1, false)
	st2 := g.status()
	res.addObs("next round: " + sendShort(rr) + "; status: " + st2.String())
	switch {
	case rr.Code == 0 && !ok:
		res.failf("COMMITTED WITH WRONG BYTES: %s", why)
		res.DataLost = true
	case rr.Code == 0:
		gen := fmt.Sprint(rr.Stats["generation"])
		if gen == "1" {
			res.failf("round accepted and restarted at generation 1 (history lost)")
		} else {
			res.failf("round accepted over a corrupt state (generation %s)", gen)
		}
	case !strings.Contains(strings.ToLower(rr.Stderr), "state"):
		res.failf("refused, but the error does not name the state")
	}
	if st2.Current && !ok {
		res.DataLost = true
		res.failf("status current with wrong bytes")
	}
	return res
}

// CaseTargetDeleted removes a file target while a first round writes it.
func (e *Env) CaseTargetDeleted(ctx context.Context) Result {
	res := Result{Case: "target file deleted mid-round", Verdict: "PASS",
		Expected: "the round fails (target state error) and the volume is not reported current"}
	g, err := e.newRig("target-deleted", "", e.SizeMiB)
	if err != nil {
		res.failf("setup: %v", err)
		return res
	}
	s, err := e.StartSend(g.r.Addr, g.v0, g.vol)
	if err != nil {
		res.failf("send: %v", err)
		return res
	}
	mid := waitFor(60*time.Second, func() bool { return s.Done() || g.status().Incomplete })
	time.Sleep(100 * time.Millisecond)
	wasDone := s.Done()
	os.Remove(g.target)
	sr := s.Wait(3 * time.Minute)
	_, statErr := os.Stat(g.target)
	st := g.status()
	res.addObs(fmt.Sprintf("deleted while applying: %v (round already over: %v); round: %s; target exists after: %v; status: %s", mid, wasDone, sendShort(sr), statErr == nil, st))
	if sr.Code == 0 {
		res.failf("round committed although its target was deleted")
	}
	if st.Current {
		if ok, _ := sameBytes(g.target, g.v0, false); !ok {
			res.failf("reported current while the target is gone or wrong")
			res.DataLost = true
		}
	}
	// Not part of the verdict: does the next round recover?
	rr := g.send(g.v0)
	ok, _ := sameBytes(g.target, g.v0, false)
	res.addObs(fmt.Sprintf("(next round: %s, identical %v)", sendShort(rr), ok))
	return res
}

// CaseTwoNames gives two --target names the same path (literally, and
// through a symlink).
func (e *Env) CaseTwoNames(ctx context.Context) []Result {
	var out []Result
	for _, alias := range []string{"same", "symlink"} {
		res := Result{Case: "two --target names on one path (" + alias + ")", Verdict: "PASS",
			Expected: "the receiver refuses to start, or refuses the second volume's round"}
		dir := e.caseDir("two-names-" + alias)
		target := filepath.Join(dir, "target.img")
		other := target
		if alias == "symlink" {
			other = filepath.Join(dir, "alias.img")
			writeFile(target, nil)
			os.Symlink(target, other)
		}
		a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
		writeFile(a, randBytes(e.Seed+11, 8*MiB))
		writeFile(b, randBytes(e.Seed+12, 8*MiB))
		r, err := e.StartReceiver("", filepath.Join(dir, "state"), []string{"a=" + target, "b=" + other})
		if err != nil {
			res.Observed = "receiver refuses to start: " + oneLine(err.Error())
			out = append(out, res)
			continue
		}
		ra := e.SendRetry(r.Addr, a, "a", time.Minute)
		rb := e.SendRetry(r.Addr, b, "b", time.Minute)
		sa := e.Status(filepath.Join(dir, "state"), "a")
		okA, _ := sameBytes(target, a, false)
		res.addObs(fmt.Sprintf("receiver started; round a: %s; round b: %s; status a: %s, a's bytes intact: %v", sendShort(ra), sendShort(rb), sa, okA))
		if ra.Code == 0 && rb.Code == 0 {
			res.failf("both names accepted")
			if sa.Current && !okA {
				res.DataLost = true
				res.failf("volume a reported current holding b's bytes")
			}
		}
		r.Kill()
		out = append(out, res)
	}
	return out
}

// CaseSourceChanges writes into (dd-like) and truncates the source while
// send reads it.
func (e *Env) CaseSourceChanges(ctx context.Context) []Result {
	var out []Result
	for _, how := range []string{"written", "truncated"} {
		res := Result{Case: "source " + how + " during send", Verdict: "PASS",
			Expected: "the round fails clearly (no commit), or commits bytes equal to the source before or after the change; never current with bytes that are neither"}
		g, err := e.newRig("source-"+how, "", e.SizeMiB)
		if err != nil {
			res.failf("setup: %v", err)
			out = append(out, res)
			continue
		}
		live := filepath.Join(g.dir, "live.img")
		copyFile(live, g.v0)
		s, err := e.StartSend(g.r.Addr, live, g.vol)
		if err != nil {
			res.failf("send: %v", err)
			out = append(out, res)
			continue
		}
		writes := 0
		switch how {
		case "written":
			// 64 KiB at random offsets every 20 ms (dd conv=notrunc) until the round ends.
			f, _ := os.OpenFile(live, os.O_WRONLY, 0)
			rng := e.rand()
			for !s.Done() && writes < 1000 {
				off := rng.Int64N(int64(e.SizeMiB*MiB - 64<<10))
				f.WriteAt(randBytes(rng.Uint64(), 64<<10), off)
				writes++
				time.Sleep(20 * time.Millisecond)
			}
			f.Close()
		case "truncated":
			waitFor(60*time.Second, func() bool { return s.Done() || g.status().Incomplete })
			time.Sleep(100 * time.Millisecond)
			os.Truncate(live, int64(e.SizeMiB*MiB/2))
		}
		sr := s.Wait(3 * time.Minute)
		st := g.status()
		pre, _ := sameBytes(g.target, g.v0, false)
		post, _ := sameBytes(g.target, live, false)
		detail := ""
		if how == "written" {
			detail = fmt.Sprintf("%d writes; ", writes)
		}
		res.addObs(fmt.Sprintf("%sround: %s; status: %s; target == before: %v, == after: %v", detail, sendShort(sr), st, pre, post))
		if sr.Code == 0 && !pre && !post {
			res.failf("COMMITTED bytes that are neither the source before nor after")
			res.DataLost = true
		} else if sr.Code != 0 && st.Current && !pre {
			res.failf("round failed but status current with changed bytes")
			res.DataLost = true
		} else if sr.Code != 0 && !strings.Contains(strings.ToLower(oneLine(sr.Stderr)), "source") {
			res.failf("round failed, but the error does not name the source as the cause")
		}
		if sr.Code != 0 {
			if l := lastLevel(g.r.Log(), "level=WARN", "level=ERROR"); l != "" {
				res.addObs("receiver log: " + clip(l, 300))
			} else {
				res.addObs("receiver log (no error logged): " + clip(lastLines(g.r.Log(), 2), 400))
			}
		}
		g.r.Kill()
		out = append(out, res)
	}
	return out
}

// lastLevel returns the last log line holding one of the levels.
func lastLevel(log string, levels ...string) string {
	lines := strings.Split(strings.TrimSpace(log), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		for _, lv := range levels {
			if strings.Contains(lines[i], lv) {
				return lines[i]
			}
		}
	}
	return ""
}
