package k8sreceiver_test

import (
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	velerov2 "github.com/vmware-tanzu/velero/pkg/apis/velero/v2alpha1"
	"github.com/zeebo/blake3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/voldelta/voldelta/api/v1alpha1"
	"github.com/voldelta/voldelta/internal/k8sreceiver"
	"github.com/voldelta/voldelta/objstore"
)

// The large-file scenario at the WAN benchmark's default scale (bench/,
// the study's figures ÷ 70): a 1000 MiB file, then 14 MiB appended to it,
// on a volume of benchVolSize.
const (
	benchFileMiB   = 1000
	benchAppendMiB = 14
	benchVolSize   = 1100 << 20
)

// largeFile is a volume image of the scenario as a block device sees it:
// the file's bytes from offset 0, then the appended bytes if appended,
// zeros up to size.
type largeFile struct {
	file, app []byte
	appended  bool
	size      int64
}

func (l largeFile) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) && off < l.size {
		var k int
		switch f, a := int64(len(l.file)), int64(len(l.app)); {
		case off < f:
			k = copy(p[n:], l.file[off:])
		case l.appended && off < f+a:
			k = copy(p[n:], l.app[off-f:])
		default:
			k = int(min(int64(len(p)-n), l.size-off))
			clear(p[n : n+k])
		}
		n += k
		off += int64(k)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// digest is the BLAKE3 of r's first size bytes.
func digest(tb testing.TB, r io.ReaderAt, size int64) string {
	tb.Helper()
	h := blake3.New()
	_, err := io.Copy(h, io.NewSectionReader(r, 0, size))
	must(tb, err)
	return hex.EncodeToString(h.Sum(nil))
}

// BenchmarkVeleroRestore restores the large-file scenario's second backup
// (the file and its append) through a DataDownload made as Velero's CSI
// plugin makes it, from the backup storage location's store (a real
// MinIO on loopback: in the study's topology the location is at the
// destination, so a restore does not cross the WAN):
//
//   - cold: into a new volume (the receiver provisions it, attaches it,
//     pulls the whole generation, verifies it and binds it to the PVC);
//   - warm: onto a replica that holds the first backup (a VolumeTarget
//     pulling the volume from the same store), which pulls only what the
//     second backup adds, in place, and is bound to the PVC.
//
// A restore is timed from the DataDownload's creation until it is
// Completed and its PVC is Bound (the application can start); its bytes
// are then checked against the backup's. The warm replica is made and
// brought to the first backup with the timer stopped. Bytes/op is the
// volume restored; downloaded-B/op what the receiver fetched from the
// store. Run: make bench-velero.
func BenchmarkVeleroRestore(b *testing.B) {
	w := newWorldWithin(b, time.Hour)
	w.size = benchVolSize
	v := w.veleroLocation()
	file, app := make([]byte, benchFileMiB<<20), make([]byte, benchAppendMiB<<20)
	rand.NewChaCha8([32]byte{1}).Read(file)
	rand.NewChaCha8([32]byte{2}).Read(app)
	gen1 := largeFile{file: file, app: app, size: benchVolSize}
	gen2 := gen1
	gen2.appended = true
	want := digest(b, gen2, benchVolSize)
	push := func(volume string, img largeFile) {
		_, err := v.store.Push(w.ctx, img, benchVolSize, objstore.PushOptions{Volume: volume})
		must(w.t, err)
	}
	push("large", gen1)
	push("large", gen2)
	w.start(func(o *k8sreceiver.RunOptions) { o.VeleroNamespace = "velero" })

	// restored checks that PVC dst/pvc holds the second backup, on pv if
	// pv is not "", and returns what its restore downloaded.
	restored := func(pvc, pv string) int64 {
		path, vol := w.devicePath(pvc)
		if pv != "" && vol.Name != pv {
			w.t.Fatalf("%s bound to %s, want the warm replica's %s", pvc, vol.Name, pv)
		}
		f, err := os.Open(path)
		must(w.t, err)
		defer f.Close()
		if got := digest(w.t, f, benchVolSize); got != want {
			w.t.Fatalf("%s's bytes: BLAKE3 %s, the backup's %s", pvc, got, want)
		}
		return pulledBytes(w.t, w, "restore-"+pvc)
	}
	// The testing package calls a sub-benchmark more than once (b.N = 1,
	// then the -benchtime count) in the same cluster: seq names every
	// restore's objects apart.
	seq := 0
	run := func(sb *testing.B, name string, prepare func(seq int) (snapshotID, pv string)) {
		w.t = sb
		defer func() { w.t = b }()
		sb.SetBytes(benchVolSize)
		sb.ReportAllocs()
		var downloaded int64
		for range sb.N {
			sb.StopTimer()
			seq++
			snapshotID, pv := prepare(seq)
			pvc := fmt.Sprintf("%s-%d", name, seq)
			sb.StartTimer()
			v.waitRestored(v.restore(pvc, snapshotID, false), pvc)
			sb.StopTimer()
			downloaded += restored(pvc, pv)
			sb.StartTimer()
		}
		sb.ReportMetric(float64(downloaded)/float64(sb.N), "downloaded-B/op")
	}
	b.Run("cold", func(sb *testing.B) {
		run(sb, "cold", func(int) (string, string) { return "large@2", "" })
	})
	b.Run("warm", func(sb *testing.B) {
		run(sb, "warm", func(i int) (string, string) {
			volume, m := fmt.Sprintf("warm%d", i), fmt.Sprintf("w%d", i)
			push(volume, gen1) // its chunks are in the store: the manifest is new
			v.replica(m, volume, time.Hour)
			w.wait("replica "+m+" holds the first backup", func() (bool, string) {
				st := w.get(m).Status
				return st.StoreGeneration == 1 && st.Phase == v1alpha1.PhaseIdle, fmt.Sprintf("%+v", st)
			})
			push(volume, gen2) // the replica polls hourly: it lags one backup
			return volume + "@2", "pv-" + m
		})
	})
}

// waitRestored waits until dd is Completed and PVC dst/pvc Bound.
func (v *veleroWorld) waitRestored(dd *velerov2.DataDownload, pvc string) {
	v.t.Helper()
	v.waitPhase(dd, velerov2.DataDownloadPhaseCompleted)
	v.wait("PVC "+pvc+" bound", func() (bool, string) {
		claim, err := v.kube.CoreV1().PersistentVolumeClaims("dst").Get(v.ctx, pvc, metav1.GetOptions{})
		must(v.t, err)
		return claim.Status.Phase == corev1.ClaimBound, fmt.Sprintf("%+v", claim.Status)
	})
}
