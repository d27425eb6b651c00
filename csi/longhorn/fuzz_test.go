package longhorn

import (
	"strings"
	"testing"
)

func FuzzParseVolumeMeta(f *testing.F) {
	f.Add([]byte(`{"Size":10737418240,"Head":"volume-head-002.img","Dirty":true,"Rebuilding":false,"Error":"","Parent":"volume-snap-a.img","SectorSize":512,"BackingFilePath":"","Encrypted":false}` + "\n"))
	f.Add([]byte(`{"Size":1,"Head":"volume-head-000.img"} trailing`))
	f.Add([]byte(`{"Size":-1}`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := parseVolumeMeta(data)
		if err != nil {
			return
		}
		if info.Size == 0 || info.Size > 1<<63 || !validDiskFile(info.Head) ||
			(info.Parent != "" && !validDiskFile(info.Parent)) {
			t.Fatalf("accepted %+v", info)
		}
	})
}

func FuzzParseDiskMeta(f *testing.F) {
	f.Add([]byte(`{"Name":"volume-head-001.img","Parent":"volume-snap-a.img","Removed":false,"UserCreated":true,"Created":"2026-01-02T03:04:05Z","Labels":{"k":"v"}}` + "\n"))
	f.Add([]byte(`{"Parent":"../../etc/passwd.img"}`))
	f.Add([]byte(`{"Parent":"volume-snap-b.img"}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := parseDiskMeta("volume-snap-b.img", data)
		if err != nil {
			return
		}
		if d.parent != "" && (!validDiskFile(d.parent) || strings.Contains(d.parent, "/")) {
			t.Fatalf("accepted parent %q", d.parent)
		}
		if d.parent == d.file {
			t.Fatal("accepted a self parent")
		}
	})
}
