package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/voldelta/voldelta/internal/miniotest"
)

// minioProc is a MinIO server on a fixed address and data directory, so
// that it can be SIGKILLed and started again with the same objects.
type minioProc struct {
	e      *Env
	bin    string
	addr   string
	data   string
	cmd    *exec.Cmd
	exited chan struct{}
	log    *syncBuf
}

func (e *Env) startMinio(dir string) (*minioProc, error) {
	bin, err := miniotest.Binary()
	if err != nil {
		return nil, err
	}
	m := &minioProc{e: e, bin: bin, addr: freeAddr(), data: filepath.Join(dir, "minio-data")}
	return m, m.start()
}

func (m *minioProc) start() error {
	m.log = &syncBuf{}
	m.exited = make(chan struct{})
	m.cmd = exec.Command(m.bin, "server", "--quiet", "--address", m.addr, m.data)
	m.cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+miniotest.User, "MINIO_ROOT_PASSWORD="+miniotest.Password,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "MINIO_CI_CD=1")
	m.cmd.Stdout, m.cmd.Stderr = m.log, m.log
	if err := m.cmd.Start(); err != nil {
		return err
	}
	cmd, exited := m.cmd, m.exited
	go func() { cmd.Wait(); close(exited) }()
	m.e.Defer(func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("minio exited: %s", m.log.String())
		default:
		}
		if resp, err := http.Get("http://" + m.addr + "/minio/health/live"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("minio not live: %s", m.log.String())
}

func (m *minioProc) kill() {
	select {
	case <-m.exited:
		return
	default:
	}
	m.cmd.Process.Signal(syscall.SIGKILL)
	<-m.exited
}

// restart starts it again on the same address and data, retrying while
// the port is still held.
func (m *minioProc) restart() error {
	var err error
	for range 10 {
		if err = m.start(); err == nil {
			return nil
		}
		time.Sleep(500 * time.Millisecond)
	}
	return err
}

func (m *minioProc) client() (*minio.Client, error) {
	return minio.New(m.addr, &minio.Options{Creds: credentials.NewStaticV4(miniotest.User, miniotest.Password, "")})
}

// storeRig is a MinIO with a bucket and the push/pull command lines.
type storeRig struct {
	e     *Env
	dir   string
	m     *minioProc
	store string
	creds []string
}

func (s *storeRig) cmd(kind string, extra ...string) []string {
	args := []string{kind, "--store", s.store, "--endpoint", s.m.addr, "--insecure", "-q"}
	if kind == "push" {
		args = append(args, "--progress", "never")
	}
	return append(args, extra...)
}

func (s *storeRig) start(kind string, extra ...string) (*Sender, error) {
	stats := filepath.Join(s.dir, fmt.Sprintf("%s-%d.json", kind, s.e.rand().Uint64()))
	return s.e.startProc(append(s.cmd(kind, extra...), "--stats-json", stats), s.creds, stats)
}

func (s *storeRig) run(timeout time.Duration, kind string, extra ...string) SendResult {
	p, err := s.start(kind, extra...)
	if err != nil {
		return SendResult{Err: err, Code: -1}
	}
	return p.Wait(timeout)
}

func (s *storeRig) push(src, vol string) SendResult {
	return s.run(5*time.Minute, "push", "--source", src, "--volume", vol)
}

func (s *storeRig) pullArgs(vol, target, state string) []string {
	return []string{"--volume", vol, "--target", target, "--state-dir", state}
}

func (e *Env) newStoreRig() (*storeRig, error) {
	s := &storeRig{e: e, dir: e.caseDir("store"), store: "s3://faults/vd",
		creds: []string{"AWS_ACCESS_KEY_ID=" + miniotest.User, "AWS_SECRET_ACCESS_KEY=" + miniotest.Password, "AWS_REGION=us-east-1"}}
	m, err := e.startMinio(s.dir)
	if err != nil {
		return nil, err
	}
	s.m = m
	cl, err := m.client()
	if err != nil {
		return nil, err
	}
	if err := cl.MakeBucket(context.Background(), "faults", minio.MakeBucketOptions{}); err != nil {
		return nil, err
	}
	return s, nil
}

// CaseStore runs the object-store faults against one real MinIO.
func (e *Env) CaseStore(ctx context.Context) []Result {
	s, err := e.newStoreRig()
	if err != nil {
		return []Result{{Case: "store (MinIO)", Verdict: "FAIL", Observed: "setup: " + oneLine(err.Error())}}
	}
	return []Result{s.killMid("push"), s.killMid("pull"), s.damagedChunk(), s.badCreds()}
}

// killMid SIGKILLs MinIO halfway through a push or a pull (the half
// measured by an unbroken one), restarts it 3 s later, and retries once if
// the command failed; the pulled target must then equal the source.
func (s *storeRig) killMid(kind string) Result {
	res := Result{Case: "store: MinIO SIGKILLed and restarted mid-" + kind, Verdict: "PASS",
		Expected: kind + " finishes or fails clearly; after a retry the pulled target is identical and current"}
	src := filepath.Join(s.dir, kind+"-src.img")
	writeFile(src, randBytes(s.e.Seed+31+uint64(len(kind)), 256*MiB))
	ref := filepath.Join(s.dir, kind+"-ref.img")
	writeFile(ref, randBytes(s.e.Seed+41+uint64(len(kind)), 256*MiB))
	vol := "mid-" + kind
	// Reference timing on a volume of its own.
	var half time.Duration
	if kind == "push" {
		rr := s.push(ref, "ref-"+kind)
		if rr.Code != 0 {
			res.failf("reference push: %s", rr)
			return res
		}
		half = rr.Dur / 2
	} else {
		if rr := s.push(src, vol); rr.Code != 0 {
			res.failf("push: %s", rr)
			return res
		}
		rr := s.run(5*time.Minute, "pull", s.pullArgs(vol, filepath.Join(s.dir, "ref-target.img"), filepath.Join(s.dir, "ref-state"))...)
		if rr.Code != 0 {
			res.failf("reference pull: %s", rr)
			return res
		}
		half = rr.Dur / 2
	}
	target, state := filepath.Join(s.dir, kind+"-target.img"), filepath.Join(s.dir, kind+"-state")
	var p *Sender
	var err error
	if kind == "push" {
		p, err = s.start("push", "--source", src, "--volume", vol)
	} else {
		p, err = s.start("pull", s.pullArgs(vol, target, state)...)
	}
	if err != nil {
		res.failf("%s: %v", kind, err)
		return res
	}
	time.Sleep(half)
	wasDone := p.Done()
	s.m.kill()
	time.Sleep(3 * time.Second)
	if err := s.m.restart(); err != nil {
		res.failf("restart minio: %v", err)
		return res
	}
	r := p.Wait(5 * time.Minute)
	res.addObs(fmt.Sprintf("killed at %.1fs (ended before: %v); %s: %s", half.Seconds(), wasDone, kind, sendShort(r)))
	if r.Err != nil {
		res.failf("%s hung (killed after 5 min)", kind)
	} else if r.Code != 0 && strings.TrimSpace(r.Stderr) == "" {
		res.failf("failed without a message")
	}
	if kind == "pull" && r.Code != 0 {
		if st := s.e.Status(state, vol); st.Current {
			res.failf("status current after a failed pull")
		}
	}
	if r.Code != 0 { // retry
		var rr SendResult
		if kind == "push" {
			rr = s.push(src, vol)
		} else {
			rr = s.run(5*time.Minute, "pull", s.pullArgs(vol, target, state)...)
		}
		res.addObs("retry: " + sendShort(rr))
		if rr.Code != 0 {
			res.failf("retry failed")
			return res
		}
	}
	if kind == "push" {
		if rr := s.run(5*time.Minute, "pull", s.pullArgs(vol, target, state)...); rr.Code != 0 {
			res.failf("pull after the push: %s", sendShort(rr))
			return res
		}
	}
	ok, why := sameBytes(target, src, false)
	st := s.e.Status(state, vol)
	res.addObs(fmt.Sprintf("pulled target identical: %v %s; status %s", ok, why, st))
	if !ok {
		res.failf("pulled target differs")
		if st.Current {
			res.DataLost = true
		}
	} else if !st.Current {
		res.failf("not current")
	}
	return res
}

// damagedChunk replaces one chunk object with a validly encoded object of
// the right length holding other bytes (only the content hash can tell).
func (s *storeRig) damagedChunk() Result {
	res := Result{Case: "store: one chunk object overwritten with wrong bytes (valid encoding, right length)", Verdict: "PASS",
		Expected: "pull refuses with a clear error (corrupt chunk / hash mismatch) and never commits; status not current"}
	src := filepath.Join(s.dir, "damaged-src.img")
	writeFile(src, randBytes(s.e.Seed+51, 32*MiB))
	vol := "damaged"
	if rr := s.push(src, vol); rr.Code != 0 {
		res.failf("push: %s", rr)
		return res
	}
	cl, err := s.m.client()
	if err != nil {
		res.failf("client: %v", err)
		return res
	}
	ctx := context.Background()
	var key string
	known := map[string]bool{}
	// chunks of earlier cases' volumes are in the store too: pick one of this volume's
	// by pushing first and taking the newest object.
	var newest time.Time
	for obj := range cl.ListObjects(ctx, "faults", minio.ListObjectsOptions{Prefix: "vd/chunks/", Recursive: true}) {
		if obj.Err != nil {
			res.failf("list: %v", obj.Err)
			return res
		}
		known[obj.Key] = true
		if obj.LastModified.After(newest) && obj.Size > 1024 {
			newest, key = obj.LastModified, obj.Key
		}
	}
	if key == "" {
		res.failf("no chunk objects")
		return res
	}
	o, err := cl.GetObject(ctx, "faults", key, minio.GetObjectOptions{})
	if err != nil {
		res.failf("get: %v", err)
		return res
	}
	var buf bytes.Buffer
	buf.ReadFrom(o)
	o.Close()
	obj := buf.Bytes()
	var bad []byte
	switch obj[0] {
	case 0: // raw: flip a byte in the middle
		bad = append([]byte(nil), obj...)
		bad[len(bad)/2] ^= 0xff
	case 1: // zstd: decode for the length, store raw random bytes of that length
		dec, _ := zstd.NewReader(nil)
		raw, err := dec.DecodeAll(obj[1:], nil)
		dec.Close()
		if err != nil {
			res.failf("decode the original object: %v", err)
			return res
		}
		bad = append([]byte{0}, randBytes(s.e.Seed+52, len(raw))...)
	default:
		res.failf("unknown chunk codec %d", obj[0])
		return res
	}
	if _, err := cl.PutObject(ctx, "faults", key, bytes.NewReader(bad), int64(len(bad)), minio.PutObjectOptions{}); err != nil {
		res.failf("put: %v", err)
		return res
	}
	target, state := filepath.Join(s.dir, "damaged-target.img"), filepath.Join(s.dir, "damaged-state")
	rr := s.run(5*time.Minute, "pull", s.pullArgs(vol, target, state)...)
	st := s.e.Status(state, vol)
	ok, _ := sameBytes(target, src, false)
	res.addObs(fmt.Sprintf("damaged %s; pull: %s; status: %s", filepath.Base(key)[:12], sendShort(rr), st))
	switch {
	case rr.Code == 0 && !ok:
		res.failf("COMMITTED WITH WRONG BYTES")
		res.DataLost = true
	case rr.Code == 0:
		res.failf("pull succeeded (the damaged object was not used or was repaired?)")
	case rr.Err != nil:
		res.failf("pull hung")
	default:
		low := strings.ToLower(rr.Stderr)
		if !(strings.Contains(low, "corrupt") || strings.Contains(low, "hash") || strings.Contains(low, "mismatch") || strings.Contains(low, "verif") || strings.Contains(low, "damaged")) {
			res.failf("error does not say the chunk is corrupt")
		}
	}
	if st.Current && !ok {
		res.DataLost = true
		res.failf("status current with wrong bytes")
	}
	return res
}

// badCreds runs push and pull with a wrong secret key.
func (s *storeRig) badCreds() Result {
	res := Result{Case: "store: bad credentials (push and pull)", Verdict: "PASS",
		Expected: "both fail at once (< 30 s) with an error about credentials/access"}
	src := filepath.Join(s.dir, "creds-src.img")
	writeFile(src, randBytes(s.e.Seed+61, 4*MiB))
	saved := s.creds
	s.creds = []string{"AWS_ACCESS_KEY_ID=" + miniotest.User, "AWS_SECRET_ACCESS_KEY=wrong-secret", "AWS_REGION=us-east-1"}
	defer func() { s.creds = saved }()
	for _, kind := range []string{"push", "pull"} {
		var rr SendResult
		if kind == "push" {
			rr = s.run(2*time.Minute, "push", "--source", src, "--volume", "creds")
		} else {
			rr = s.run(2*time.Minute, "pull", s.pullArgs("mid-push", filepath.Join(s.dir, "creds-target.img"), filepath.Join(s.dir, "creds-state"))...)
		}
		res.addObs(kind + ": " + sendShort(rr))
		low := strings.ToLower(rr.Stderr)
		switch {
		case rr.Err != nil:
			res.failf("%s hung", kind)
		case rr.Code == 0:
			res.failf("%s succeeded with a wrong secret", kind)
		case rr.Dur > 30*time.Second:
			res.failf("%s took %.0fs (retried?)", kind, rr.Dur.Seconds())
		case !(strings.Contains(low, "credential") || strings.Contains(low, "access") || strings.Contains(low, "signature") || strings.Contains(low, "denied") || strings.Contains(low, "secret")):
			res.failf("%s: error does not mention credentials", kind)
		}
	}
	return res
}
