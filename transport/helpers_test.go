package transport

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"

	"github.com/voldelta/voldelta/chunk"
)

// seeded returns n reproducible pseudo-random bytes.
func seeded(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// compressible returns n reproducible bytes that look like a log file:
// zstd shrinks them several times, but not to nothing.
func compressible(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	levels := []string{"debug", "info", "warn", "error"}
	b := make([]byte, 0, n+128)
	for len(b) < n {
		b = fmt.Appendf(b, "2025-03-%02dT%02d:%02d:%02dZ level=%s volume=pvc-%04d offset=%d len=%d\n",
			1+r.IntN(28), r.IntN(24), r.IntN(60), r.IntN(60), levels[r.IntN(4)], r.IntN(10000), r.Uint64N(1<<40), r.IntN(1<<20))
	}
	return b[:n]
}

// idOf returns an ID whose 32 bytes are all b.
func idOf(b byte) (id chunk.ID) {
	for i := range id {
		id[i] = b
	}
	return id
}

// sampleMessages returns at least one value of every message type, with
// every field set to something other than its zero value.
func sampleMessages() []Message {
	return []Message{
		Hello{Version: ProtocolVersion, Volume: "pvc-1234", Size: 10 << 30, Params: chunk.DefaultParams(), Streams: 4, Agent: "voldelta/test host-a",
			Image: "snapshot snap-2025-03-01 of pvc-1234"},
		Hello{Version: ProtocolVersion, Params: chunk.DefaultParams()},
		Hello{Version: ProtocolVersion, Volume: "pvc-1", Params: chunk.DefaultParams(), Streams: 1, Group: &Group{Name: "shop-a1b2", Members: 3, Promote: true}},
		Welcome{Generation: 7, Root: idOf(0x11), State: TargetCommitted, Receiver: "voldelta/test host-b",
			Size: 10 << 30, Image: "snapshot snap-2025-02-28 of pvc-1234", HasBase: true},
		Welcome{State: TargetIncomplete},
		Welcome{Generation: 1, State: TargetCommitted, Size: 1},
		ErrorMsg{Code: ErrCodeBusy, Message: "volume pvc-1234 is being synced by agent-2"},
		ErrorMsg{Code: 999},
		ManifestBatch{Entries: []chunk.Entry{
			{Offset: 0, Length: 300 << 10, ID: idOf(0x22)},
			{Offset: 300 << 10, Length: 64 << 20, Zero: true},
			{Offset: 300<<10 + 64<<20, Length: 1 << 20, ID: idOf(0x33)},
		}},
		ManifestEnd{Count: 3, Root: idOf(0x44)},
		Need{Ranges: []IndexRange{{First: 0, Count: 1}, {First: 2, Count: 1}, {First: 1 << 40, Count: 1 << 31}}},
		NeedEnd{Total: 1<<31 + 2},
		DataOpen{Stream: 3},
		DataOpen{Stream: 1, Control: 1<<32 - 1},
		Welcome{State: TargetNew, Receiver: "r", Rounds: MaxSessionRounds},
		Hello{Version: ProtocolVersion, Volume: "pvc-2", Params: chunk.DefaultParams(), Streams: 2, Group: &Group{Name: "shop-a1b2", Members: 2, Share: true}},
		Chunk{Index: 5, Codec: CodecRaw, RawLen: 1000, Data: seeded(5, 1000)},
		Chunk{Index: 6, Codec: CodecZstd, RawLen: 4096, Data: []byte("not really zstd: the decoder does not look inside")},
		Chunk{Index: 7, Codec: CodecRaw, RawLen: 0, Data: nil},
		BaseGet{Root: idOf(0x66)},
		ManifestCopy{First: 12, Count: 1 << 20},
		ManifestCopy{First: 1<<64 - 2, Count: 1},
		ManifestCopy{First: 0, Count: 1<<64 - 1},
		ManifestNext{Entries: []chunk.Entry{
			{Offset: 0, Length: 300 << 10, ID: idOf(0x22)},
			{Offset: 300 << 10, Length: 64 << 20, Zero: true},
			{Offset: 300<<10 + 64<<20, Length: 1 << 20, ID: idOf(0x33)},
		}},
		ChunkPatch{Index: 9, Codec: CodecRaw, RawLen: 5, Ranges: []PatchRange{{Offset: 0, Length: 2}, {Offset: 100, Length: 3}}, Data: []byte("abcde")},
		Welcome{Generation: 3, State: TargetCommitted, Receiver: "r", HasBase: true, AcceptsPatch: true},
		Result{Generation: 8, Root: idOf(0x55), Skipped: 1, Copied: 2, Fetched: 3, Zeroed: 4, CopyBytes: 5 << 20, FetchBytes: 6 << 20},
	}
}

// encode returns m's payload.
func encode(m Message) []byte { return m.AppendPayload(nil) }

// equalMsg compares two messages, treating nil and empty slices alike.
func equalMsg(a, b Message) bool {
	switch a := a.(type) {
	case Chunk:
		b, ok := b.(Chunk)
		return ok && a.Index == b.Index && a.Codec == b.Codec && a.RawLen == b.RawLen && bytes.Equal(a.Data, b.Data)
	case ManifestBatch:
		b, ok := b.(ManifestBatch)
		return ok && len(a.Entries) == len(b.Entries) && (len(a.Entries) == 0 || reflect.DeepEqual(a.Entries, b.Entries))
	case Need:
		b, ok := b.(Need)
		return ok && len(a.Ranges) == len(b.Ranges) && (len(a.Ranges) == 0 || reflect.DeepEqual(a.Ranges, b.Ranges))
	}
	return reflect.DeepEqual(a, b)
}
