package chunk

import (
	"bytes"
	"strings"
	"testing"
)

// Manifests come from object stores and peers, so every decoder of this
// package must reject what it cannot read without panicking, and what it
// accepts must be exactly what the encoder writes: re-encoding a decoded
// value gives the same bytes, and decoding those gives the same value.

// seedManifests returns the encodings of real manifests, from ScanManifest
// over small volumes: data only, data and zero runs, all zero, empty.
func seedManifests(f *testing.F) [][]byte {
	f.Helper()
	p := testParams()
	var vols [][]byte
	vols = append(vols, seeded(1, 100<<10))
	mixed := seeded(2, 300<<10)
	clear(mixed[64<<10 : 200<<10])
	vols = append(vols, mixed)
	vols = append(vols, make([]byte, 50<<10))
	vols = append(vols, nil)
	var out [][]byte
	for _, v := range vols {
		m := scanBytes(f, v, p, 1)
		b, err := m.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		out = append(out, b)
	}
	// A volume spanning segments, so that entries end at a segment boundary.
	seg := p
	seg.SegmentSize = MinSegmentSize
	seg.MaxSize, seg.AvgSize, seg.MinSize = 64<<10, 32<<10, 16<<10
	m := scanBytes(f, seeded(3, int(MinSegmentSize)+20<<10), seg, 2)
	b, err := m.MarshalBinary()
	if err != nil {
		f.Fatal(err)
	}
	return append(out, b)
}

func FuzzManifestUnmarshal(f *testing.F) {
	for _, b := range seedManifests(f) {
		f.Add(b)
	}
	f.Add([]byte(manifestMagic))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		sentinel := Manifest{Size: 12345, Root: ID{1}}
		m := sentinel
		if err := m.UnmarshalBinary(data); err != nil {
			if m.Size != sentinel.Size || m.Root != sentinel.Root || m.Entries != nil || m.Params != sentinel.Params {
				t.Fatalf("failed decode (%v) changed the manifest: %+v", err, m)
			}
			return
		}
		// What decodes is valid: the params pass Validate and the entries
		// cover the volume (UnmarshalBinary rebuilt the root over them).
		if err := m.Params.Validate(); err != nil {
			t.Fatalf("accepted invalid params: %v", err)
		}
		var end uint64
		for i, e := range m.Entries {
			if e.Offset != end || e.Length == 0 {
				t.Fatalf("entry %d (%v) does not follow %d", i, e, end)
			}
			end = e.End()
		}
		if end != m.Size {
			t.Fatalf("entries cover %d of %d bytes", end, m.Size)
		}
		enc, err := m.MarshalBinary()
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		if !bytes.Equal(enc, data) {
			t.Fatalf("re-encoding differs from the input:\n in  %x\n out %x", data, enc)
		}
		var again Manifest
		if err := again.UnmarshalBinary(enc); err != nil {
			t.Fatalf("re-encoding does not decode: %v", err)
		}
		if again.Params != m.Params || again.Size != m.Size || again.Root != m.Root || !equalEntries(again.Entries, m.Entries) {
			t.Fatalf("round trip changed the manifest: %+v -> %+v", m, again)
		}
	})
}

func FuzzDecodeEntry(f *testing.F) {
	for _, b := range seedManifests(f) {
		var m Manifest
		if err := m.UnmarshalBinary(b); err != nil {
			f.Fatal(err)
		}
		for _, e := range m.Entries {
			f.Add(AppendEntry(nil, e))
		}
	}
	f.Add(AppendEntry(nil, Entry{Offset: 1 << 40, Length: 1 << 30, Zero: true}))
	f.Add(append(AppendEntry(nil, Entry{Length: 7, ID: Sum([]byte("x"))}), "trailing"...))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := DecodeEntry(data)
		if err != nil {
			return
		}
		if e.Zero && !e.ID.IsZero() {
			t.Fatalf("accepted a zero run with an id: %v", e)
		}
		enc := AppendEntry(nil, e)
		if len(enc) != EntrySize {
			t.Fatalf("encoding is %d bytes, want %d", len(enc), EntrySize)
		}
		if !bytes.Equal(enc, data[:EntrySize]) {
			t.Fatalf("re-encoding differs from the input:\n in  %x\n out %x", data[:EntrySize], enc)
		}
		again, err := DecodeEntry(enc)
		if err != nil {
			t.Fatalf("re-encoding does not decode: %v", err)
		}
		if again != e {
			t.Fatalf("round trip changed the entry: %v -> %v", e, again)
		}
	})
}

func FuzzDecodeParams(f *testing.F) {
	f.Add(AppendParams(nil, DefaultParams()))
	f.Add(AppendParams(nil, testParams()))
	f.Add(append(AppendParams(nil, DefaultParams()), "rest of a manifest"...))
	f.Add(AppendParams(nil, Params{}))
	f.Add(AppendParams(nil, Params{Algorithm: strings.Repeat("a", 255), Polynomial: 1<<64 - 1, SegmentSize: 1}))
	f.Add([]byte{200, 'x'})
	f.Fuzz(func(t *testing.T, data []byte) {
		p, rest, err := DecodeParams(data)
		if err != nil {
			return
		}
		if len(rest) > len(data) || !bytes.Equal(rest, data[len(data)-len(rest):]) {
			t.Fatalf("rest %x is not a suffix of the input %x", rest, data)
		}
		used := data[:len(data)-len(rest)]
		enc := AppendParams(nil, p)
		if !bytes.Equal(enc, used) {
			t.Fatalf("re-encoding differs from the bytes consumed:\n in  %x\n out %x", used, enc)
		}
		again, rest2, err := DecodeParams(enc)
		if err != nil {
			t.Fatalf("re-encoding does not decode: %v", err)
		}
		if again != p || len(rest2) != 0 {
			t.Fatalf("round trip changed the params: %+v -> %+v (rest %x)", p, again, rest2)
		}
		// Validation of decoded params must not panic either.
		_ = p.Validate()
	})
}

func FuzzParseID(f *testing.F) {
	f.Add(Sum([]byte("voldelta")).String())
	f.Add(strings.ToUpper(Sum(nil).String()))
	f.Add(ID{}.String())
	f.Add("not hex")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseID(s)
		if err != nil {
			return
		}
		if !strings.EqualFold(id.String(), s) {
			t.Fatalf("ParseID(%q) = %s", s, id)
		}
		again, err := ParseID(id.String())
		if err != nil || again != id {
			t.Fatalf("round trip of %s: %s, %v", id, again, err)
		}
	})
}
