package receiver

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/voldelta/voldelta/chunk"
)

// The receiver's own files are read back after crashes and by hand edits:
// every decoder either refuses its input or returns what re-encodes to it.

func FuzzDecodeExtents(f *testing.F) {
	p := smallParams()
	f.Add(encodeExtents(p, nil))
	f.Add(encodeExtents(p, []chunk.Entry{{Offset: 0, Length: 100, ID: chunk.ID{1}}, {Offset: 100, Length: 1 << 20, Zero: true}}))
	f.Add([]byte(extentsMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, exts, err := decodeExtents(b)
		if err != nil {
			return
		}
		var end uint64
		for _, e := range exts {
			if e.Offset < end || e.Length == 0 {
				t.Fatalf("decoded overlapping or empty extents: %v", exts)
			}
			end = e.End()
		}
		if again := encodeExtents(p, exts); !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs")
		}
	})
}

func FuzzJournalRecords(f *testing.F) {
	var j journal
	j.add(recIntent, chunk.Entry{Offset: 0, Length: 10, ID: chunk.ID{1}})
	j.add(recDone, chunk.Entry{Offset: 0, Length: 10, ID: chunk.ID{1}})
	j.add(recIntent, chunk.Entry{Offset: 10, Length: 4096, Zero: true})
	f.Add(j.buf)
	f.Add(j.buf[:len(j.buf)-3])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		intents, done, err := decodeJournalRecords(b)
		if err != nil {
			if !errors.Is(err, errJournalDamaged) {
				t.Fatalf("error of another kind: %v", err)
			}
			return
		}
		// What decodes is a prefix of the input, record for record.
		var again journal
		var i, d int
		for n := 0; n*journalRec+journalRec <= len(b) && i+d < len(intents)+len(done); n++ {
			switch b[n*journalRec] {
			case recIntent:
				again.add(recIntent, intents[i])
				i++
			case recDone:
				again.add(recDone, done[d])
				d++
			}
		}
		if !bytes.Equal(again.buf, b[:len(again.buf)]) {
			t.Fatalf("decoded records do not re-encode to the input")
		}
		if len(b)-len(again.buf) >= 2*journalRec {
			t.Fatalf("%d bytes ignored past the decoded records: only a torn last record may be", len(b)-len(again.buf))
		}
	})
}

func FuzzDecodeState(f *testing.F) {
	st := &State{Volume: "v", Target: "/t", Phase: PhaseCommitted, Generation: 2, Root: "ab", Params: smallParams(), Image: "snap-2",
		CommittedAt: time.Unix(1700000000, 5).UTC(), History: []Committed{{Generation: 2, Root: "ab", Image: "snap-2"}}}
	sum, err := stateChecksum(st)
	if err != nil {
		f.Fatal(err)
	}
	st.Checksum = sum
	b, _ := json.MarshalIndent(st, "", "  ")
	f.Add(b)
	f.Add([]byte(`{"phase":"applying"}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := decodeState(b)
		if err != nil {
			return
		}
		if st.Phase != PhaseCommitted && st.Phase != PhaseApplying || st.Phase == PhaseApplying && st.Applying == nil {
			t.Fatalf("accepted a state with phase %q, applying %v", st.Phase, st.Applying)
		}
		want, err := stateChecksum(st)
		if err != nil || want != st.Checksum {
			t.Fatalf("accepted a state whose checksum does not match: %v", err)
		}
	})
}
