package k8sagent

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// parsePodMounts finds a PV's mounts by pods in a mountinfo listing (one
// per device, escapes undone) and nothing else: not its staging mount, not
// another PV's, not another kubelet directory's.
func TestParsePodMounts(t *testing.T) {
	const info = `22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
30 22 8:16 / /host/var/lib/kubelet/plugins/kubernetes.io/csi/x.csi.io/abc/globalmount rw shared:5 - xfs /dev/sdb rw
31 22 8:16 / /host/var/lib/kubelet/pods/uid-2/volumes/kubernetes.io~csi/pv-1/mount rw shared:6 - xfs /dev/sdb rw
32 22 8:16 / /host/var/lib/kubelet/pods/uid-1/volumes/kubernetes.io~csi/pv-1/mount rw shared:7 master:3 - xfs /dev/sdb rw
33 22 8:32 / /host/var/lib/kubelet/pods/uid-1/volumes/kubernetes.io~csi/pv-2/mount rw - ext4 /dev/sdc rw
34 22 8:48 /sub /host/var/lib/kubelet/pods/uid\0403/volumes/kubernetes.io~csi/pv-1/mount rw - ext4 /dev/sdd rw
35 22 8:64 / /other/pods/uid-1/volumes/kubernetes.io~csi/pv-1/mount rw - ext4 /dev/sde rw
36 22 8:80 / /host/var/lib/kubelet/pods/uid-4/volumes/kubernetes.io~csi/pv-1/mount/deeper rw - ext4 /dev/sdf rw
`
	got, err := parsePodMounts(strings.NewReader(info), "/host/var/lib/kubelet/", "pv-1")
	if err != nil {
		t.Fatal(err)
	}
	want := []fsMount{
		{point: "/host/var/lib/kubelet/pods/uid 3/volumes/kubernetes.io~csi/pv-1/mount", dev: unix.Mkdev(8, 48), root: "/sub", fstype: "ext4"},
		{point: "/host/var/lib/kubelet/pods/uid-1/volumes/kubernetes.io~csi/pv-1/mount", dev: unix.Mkdev(8, 16), root: "/", fstype: "xfs"},
	}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("mounts\n%+v\nwant\n%+v", got, want)
	}
	if _, err := parsePodMounts(strings.NewReader("1 2 x / /p rw - ext4 /dev/x rw\n"), "/k", "pv"); err == nil {
		t.Error("a malformed device was accepted")
	}
}
