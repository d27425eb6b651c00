package hint

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/voldelta/voldelta/chunk"
)

func TestParseChanged(t *testing.T) {
	const size = 64 << 20
	for _, c := range []struct {
		name, in string
		want     []chunk.Extent
	}{
		{"rbd diff json", `[{"offset":0,"length":4194304,"exists":"true"},{"offset":8388608,"length":4194304,"exists":"false"}]`,
			[]chunk.Extent{x(0, 4<<20), x(8<<20, 4<<20)}},
		{"rbd diff json-pretty", "[\n    {\n        \"offset\": 4096,\n        \"length\": 4096,\n        \"exists\": \"true\"\n    }\n]\n",
			[]chunk.Extent{x(4096, 4096)}},
		{"boolean exists and no exists", `[{"offset":0,"length":1,"exists":true},{"offset":10,"length":1,"exists":false},{"offset":20,"length":1}]`,
			[]chunk.Extent{x(0, 1), x(10, 1), x(20, 1)}},
		{"extra keys ignored", `[{"offset":0,"length":1,"type":"data"}]`, []chunk.Extent{x(0, 1)}},
		{"object", ` {"extents":[{"offset":512,"length":512}]} `, []chunk.Extent{x(512, 512)}},
		{"empty json array", `[]`, []chunk.Extent{}},
		{"empty object list", `{"extents":[]}`, []chunk.Extent{}},
		{"adjacent merged (json)", `[{"offset":0,"length":4096},{"offset":4096,"length":4096},{"offset":16384,"length":1}]`,
			[]chunk.Extent{x(0, 8192), x(16384, 1)}},
		{"text", "# changes since snap-1\n0 4096\n\n0x10000 0x1000   # hex\n\t8388608\t512\n",
			[]chunk.Extent{x(0, 4096), x(0x10000, 0x1000), x(8<<20, 512)}},
		{"text leading zeros are decimal", "0100 010\n", []chunk.Extent{x(100, 10)}},
		{"text adjacent merged", "0 10\n10 10\n30 1\n", []chunk.Extent{x(0, 20), x(30, 1)}},
		{"comment only: nothing changed", "# nothing changed\n", []chunk.Extent{}},
		{"crlf", "0 10\r\n20 10\r\n", []chunk.Extent{x(0, 10), x(20, 10)}},
		{"up to the end", fmt.Sprintf("%d 1\n", size-1), []chunk.Extent{x(size-1, 1)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseChanged(strings.NewReader(c.in), size)
			if err != nil {
				t.Fatal(err)
			}
			if got == nil || !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got %v, want %v", got, c.want)
			}
			if err := Check(got, size); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestParseChangedRejects(t *testing.T) {
	const size = 1 << 20
	for _, c := range []struct {
		name, in, want string
	}{
		{"empty", "", "empty"},
		{"white space", " \n\t\n", "empty"},
		{"unsorted text", "4096 10\n0 10\n", "line 2: extent at offset 0 starts before the end (4106)"},
		{"overlapping text", "0 4096\n# c\n4095 10\n", "line 3: extent at offset 4095 starts before the end (4096)"},
		{"unsorted json", `[{"offset":100,"length":1},{"offset":0,"length":1}]`, "extent 1: extent at offset 0 starts before"},
		{"zero length", "0 0\n", "line 1: extent at offset 0 has length 0"},
		{"zero length json", `[{"offset":5,"length":0}]`, "extent 0: extent at offset 5 has length 0"},
		{"past the end", fmt.Sprintf("%d 2\n", size-1), "past the image size"},
		{"past the end json", fmt.Sprintf(`[{"offset":%d,"length":1}]`, size), "past the image size"},
		{"overflow", "0xffffffffffffffff 2\n", "overflows 64 bits"},
		{"too big a number", "18446744073709551616 1\n", "does not fit in 64 bits"},
		{"negative", "-1 5\n", "offset: \"-1\" is not a number"},
		{"plus", "+1 5\n", "is not a number"},
		{"octal-looking hex", "0x 5\n", "is not a decimal"},
		{"underscores", "1_000 5\n", "is not a decimal"},
		{"one field", "4096\n", "line 1: \"4096\" is not \"OFFSET LENGTH\""},
		{"three fields", "0 1 2\n", "is not \"OFFSET LENGTH\""},
		{"json float", `[{"offset":1.5,"length":1}]`, "extent 0: offset: 1.5 is not an integer"},
		{"json exponent", `[{"offset":1e3,"length":1}]`, "is not an integer"},
		{"json negative", `[{"offset":0,"length":-1}]`, "length: -1 is not an integer"},
		{"json missing length", `[{"offset":0}]`, "extent 0: needs \"offset\" and \"length\""},
		{"json bad exists", `[{"offset":0,"length":1,"exists":"maybe"}]`, "\"exists\" is \"maybe\""},
		{"json not an object", `[1]`, "extent 0"},
		{"json unknown key", `{"extent":[]}`, "unknown key \"extent\""},
		{"json no extents", `{}`, "no \"extents\""},
		{"json twice", `{"extents":[],"extents":[]}`, "twice"},
		{"json extents not array", `{"extents":{}}`, "not an array"},
		{"json trailing", `[] []`, "data after the list"},
		{"json truncated", `[{"offset":0,"length":1}`, "JSON"},
		{"too many", strings.Repeat("x", 0) + manyExtents(size/512+2), "more than 2049 extents"},
		{"long line", strings.Repeat("#", maxChangedLine+10) + "\n", "longer than"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseChanged(strings.NewReader(c.in), size)
			if err == nil {
				t.Fatalf("accepted: %v", got)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not say %q", err, c.want)
			}
		})
	}
}

// manyExtents returns n disjoint, non-adjacent one-byte extents.
func manyExtents(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "%d 1\n", 2*i)
	}
	return b.String()
}

func TestParseChangedBoundsInput(t *testing.T) {
	// A tiny image may have few extents, and the input is cut long before
	// an absurd file is read to its end.
	r := &endless{line: []byte("# padding\n")}
	_, err := ParseChanged(r, 4096)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("endless input: %v", err)
	}
	if r.read > 4<<20 {
		t.Fatalf("read %d bytes of an endless input", r.read)
	}
}

type endless struct {
	line []byte
	read int
}

func (e *endless) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		n += copy(p[n:], e.line[(e.read+n)%len(e.line):])
	}
	e.read += n
	return n, nil
}

func TestChangedFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "changed.json")
	if err := os.WriteFile(path, []byte(`[{"offset":4096,"length":8192,"exists":"true"}]`), 0o644); err != nil {
		t.Fatal(err)
	}
	var src Source = ChangedFile{Path: path}
	if src.Name() != "changed-file" || src.BaseImage() != "" {
		t.Fatalf("name %q, base %q", src.Name(), src.BaseImage())
	}
	got, err := src.Changed(context.Background(), 1<<20)
	if err != nil || !reflect.DeepEqual(got, []chunk.Extent{x(4096, 8192)}) {
		t.Fatalf("got %v, %v", got, err)
	}
	// Past the end of a smaller image: an error naming the file, not
	// ErrUnavailable.
	_, err = src.Changed(context.Background(), 8192)
	if !errors.Is(err, ErrInvalid) || errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), path) {
		t.Fatalf("out of range: %v", err)
	}
	_, err = ChangedFile{Path: filepath.Join(dir, "missing")}.Changed(context.Background(), 1<<20)
	if err == nil || errors.Is(err, ErrUnavailable) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func TestFromFlags(t *testing.T) {
	dir := t.TempDir()
	src, base, changed := filepath.Join(dir, "snap-2.img"), filepath.Join(dir, "snap-1.img"), filepath.Join(dir, "changed")
	for _, p := range []string{src, base, changed} {
		if err := os.WriteFile(p, []byte("# nothing\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s, err := FromFlags(src, "", "")
	if s != nil || err != nil {
		t.Fatalf("no flags: %v, %v", s, err)
	}
	s, err = FromFlags(src, base, "")
	r, ok := s.(*Reflink)
	if err != nil || !ok || r.Base != base || r.New != src || r.Name() != "reflink" {
		t.Fatalf("--base: %#v, %v", s, err)
	}
	if id, _ := FileIdentity(base); r.BaseImage() != id || id == "" {
		t.Fatalf("BaseImage %q, identity of the base %q", r.BaseImage(), id)
	}
	s, err = FromFlags(src, "", changed)
	if cf, ok := s.(ChangedFile); err != nil || !ok || cf.Path != changed {
		t.Fatalf("--changed: %#v, %v", s, err)
	}
	for _, c := range []struct{ source, base, changed, want string }{
		{src, base, changed, "give one"},
		{"", base, "", "--base needs --source"},
		{src, filepath.Join(dir, "nope"), "", "no such file"},
		{filepath.Join(dir, "nope"), base, "", "no such file"},
		{src, dir, "", "not a regular file"},
		{src, "", filepath.Join(dir, "nope"), "--changed"},
	} {
		s, err := FromFlags(c.source, c.base, c.changed)
		if err == nil || s != nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("FromFlags(%q, %q, %q) = %v, %v; want an error saying %q", c.source, c.base, c.changed, s, err, c.want)
		}
	}
}

func TestFileIdentity(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "img")
	if err := os.WriteFile(path, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	id1, err := FileIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(id1, "file:dev=") || !strings.Contains(id1, ",size=4096,ctime=") {
		t.Fatalf("identity %q", id1)
	}
	if id, _ := FileIdentity(path); id != id1 {
		t.Fatalf("identity not stable: %q then %q", id1, id)
	}
	// A read leaves it alone; an append changes it.
	if _, err := os.ReadFile(path); err != nil {
		t.Fatal(err)
	}
	if id, _ := FileIdentity(path); id != id1 {
		t.Fatalf("a read changed the identity: %q then %q", id1, id)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("x"))
	f.Close()
	if id, _ := FileIdentity(path); id == id1 {
		t.Fatal("a write left the identity unchanged")
	}
	// Another file with the same content is another identity.
	other := filepath.Join(dir, "copy")
	data, _ := os.ReadFile(path)
	os.WriteFile(other, data, 0o644)
	if a, _ := FileIdentity(path); a == mustIdentity(t, other) {
		t.Fatal("two files share an identity")
	}
	if _, err := FileIdentity(dir); err == nil || !strings.Contains(err.Error(), "neither a regular file nor a block device") {
		t.Fatalf("directory: %v", err)
	}
	if _, err := FileIdentity(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing: %v", err)
	}
}

func mustIdentity(t *testing.T, path string) string {
	t.Helper()
	id, err := FileIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func FuzzParseChanged(f *testing.F) {
	for _, s := range []string{
		`[{"offset":0,"length":4194304,"exists":"true"},{"offset":8388608,"length":4194304,"exists":"false"}]`,
		`{"extents":[{"offset":512,"length":512}]}`,
		"# c\n0 4096\n0x10000 0x1000\n",
		"0 10\n10 10\n",
		"", "[]", "0 0\n", "5 1\n0 1\n",
	} {
		f.Add([]byte(s), uint64(64<<20))
	}
	f.Fuzz(func(t *testing.T, in []byte, size uint64) {
		got, err := ParseChanged(strings.NewReader(string(in)), size)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if got == nil {
			t.Fatal("nil result without an error")
		}
		if err := Check(got, size); err != nil {
			t.Fatalf("accepted extents that fail Check: %v: %v", got, err)
		}
		for i := 1; i < len(got); i++ {
			if got[i].Offset == got[i-1].Offset+got[i-1].Length {
				t.Fatalf("adjacent extents %v and %v not merged", got[i-1], got[i])
			}
		}
		if uint64(len(got)) > size/512+1 {
			t.Fatalf("%d extents for an image of %d bytes", len(got), size)
		}
	})
}
