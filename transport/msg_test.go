package transport

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/voldelta/voldelta/chunk"
)

// unhex decodes hex written in groups separated by spaces and "|", as in
// spec.md's tables.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	s = strings.NewReplacer(" ", "", "|", "", "\n", "", "\t", "").Replace(s)
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad golden hex: %v", err)
	}
	return b
}

// TestGoldenEncodings pins the byte layout of every message, field by field
// as spec.md describes it. A failure here is a wire format change.
func TestGoldenEncodings(t *testing.T) {
	ids := func(b string) string { return strings.Repeat(b, 32) }
	cases := []struct {
		name string
		msg  Message
		hex  string
	}{
		{"HELLO", Hello{Version: 2, Volume: "pvc-1", Size: 1 << 30, Params: chunk.DefaultParams().WithSizes(64<<10, 256<<10, 1<<20), Streams: 4, Agent: "agent/1",
			Image: "snap-1"},
			`56444c54 | 0002 | 05 7076632d31 | 0000000040000000 |
			 13 726162696e2d7365672f626c616b65332f7631 | 003da3358b4dc173 | 00010000 | 00040000 | 00100000 | 0000000004000000 |
			 0004 | 07 6167656e742f31 | 06 736e61702d31`},
		{"HELLO no image", Hello{Version: 2, Volume: "v", Params: chunk.DefaultParams().WithSizes(64<<10, 256<<10, 1<<20), Streams: 1},
			`56444c54 | 0002 | 01 76 | 0000000000000000 |
			 13 726162696e2d7365672f626c616b65332f7631 | 003da3358b4dc173 | 00010000 | 00040000 | 00100000 | 0000000004000000 |
			 0001 | 00 | 00`},
		{"HELLO group", Hello{Version: 2, Volume: "v", Params: chunk.DefaultParams().WithSizes(64<<10, 256<<10, 1<<20), Streams: 1,
			Group: &Group{Name: "app-shop-7f3a", Members: 2, Promote: true}},
			`56444c54 | 0002 | 01 76 | 0000000000000000 |
			 13 726162696e2d7365672f626c616b65332f7631 | 003da3358b4dc173 | 00010000 | 00040000 | 00100000 | 0000000004000000 |
			 0001 | 00 | 00 | 0d 6170702d73686f702d37663361 | 0002 | 01`},
		{"WELCOME", Welcome{Generation: 2, Root: idOf(0xaa), State: TargetCommitted, Receiver: "recv/1", Size: 1 << 20, Image: "snap-1", HasBase: true},
			`0000000000000002 | ` + ids("aa") + ` | 01 | 06 726563762f31 | 0000000000100000 | 06 736e61702d31 | 01`},
		{"WELCOME new", Welcome{State: TargetNew, Receiver: "r"},
			`0000000000000000 | ` + ids("00") + ` | 00 | 01 72 | 0000000000000000 | 00 | 00`},
		{"ERROR", ErrorMsg{Code: ErrCodeApply, Message: "disk full"},
			`0007 | 0009 | 6469736b2066756c6c`},
		{"MANIFEST", ManifestBatch{Entries: []chunk.Entry{
			{Offset: 0x1000, Length: 0x2000, ID: idOf(0xbb)},
			{Offset: 0x3000, Length: 0x10000, Zero: true},
		}}, `00000002 |
			 0000000000001000 | 0000000000002000 | 00 | ` + ids("bb") + ` |
			 0000000000003000 | 0000000000010000 | 01 | ` + ids("00")},
		{"MANIFEST empty", ManifestBatch{}, `00000000`},
		{"MANIFEST_END", ManifestEnd{Count: 2, Root: idOf(0xcc)},
			`0000000000000002 | ` + ids("cc")},
		{"NEED", Need{Ranges: []IndexRange{{First: 1, Count: 2}, {First: 1 << 32, Count: 0xffffffff}}},
			`00000002 | 0000000000000001 00000002 | 0000000100000000 ffffffff`},
		{"NEED_END", NeedEnd{Total: 0x0102030405060708}, `0102030405060708`},
		{"DATA_OPEN", DataOpen{Stream: 0x0102}, `0102`},
		{"DATA_OPEN control", DataOpen{Stream: 0x0102, Control: 5}, `0102 | 00000005`},
		{"WELCOME rounds", Welcome{State: TargetNew, Receiver: "r", Rounds: 64},
			`0000000000000000 | ` + ids("00") + ` | 00 | 01 72 | 0000000000000000 | 00 | 00 | 0040`},
		{"HELLO group share", Hello{Version: 2, Volume: "v", Params: chunk.DefaultParams().WithSizes(64<<10, 256<<10, 1<<20), Streams: 1,
			Group: &Group{Name: "g", Members: 2, Promote: true, Share: true}},
			`56444c54 | 0002 | 01 76 | 0000000000000000 |
			 13 726162696e2d7365672f626c616b65332f7631 | 003da3358b4dc173 | 00010000 | 00040000 | 00100000 | 0000000004000000 |
			 0001 | 00 | 00 | 01 67 | 0002 | 03`},
		{"CHUNK raw", Chunk{Index: 9, Codec: CodecRaw, RawLen: 3, Data: []byte("abc")},
			`0000000000000009 | 00 | 00000003 | 616263`},
		{"CHUNK zstd", Chunk{Index: 10, Codec: CodecZstd, RawLen: chunk.MaxChunkSize, Data: []byte{0x28, 0xb5, 0x2f, 0xfd}},
			`000000000000000a | 01 | 00800000 | 28b52ffd`},
		{"BASE_GET", BaseGet{Root: idOf(0xee)}, ids("ee")},
		{"MANIFEST_COPY", ManifestCopy{First: 0x0102030405060708, Count: 0x1122},
			`0102030405060708 | 0000000000001122`},
		{"CHUNK_PATCH", ChunkPatch{Index: 7, Codec: CodecRaw, RawLen: 3, Ranges: []PatchRange{{Offset: 4, Length: 1}, {Offset: 0x10000, Length: 2}}, Data: []byte("xyz")},
			`0000000000000007 | 00 | 00000003 | 00000002 | 00000004 00000001 | 00010000 00000002 | 78797a`},
		{"MANIFEST_NEXT", ManifestNext{Entries: []chunk.Entry{
			{Offset: 0, Length: 0x2000, ID: idOf(0xbb)},
			{Offset: 0x2000, Length: 0x10000, Zero: true},
		}}, `00000002 | 00 00002000 ` + ids("bb") + ` | 01 0000000000010000`},
		{"CHUNK_PATCH no ranges", ChunkPatch{Index: 8, Codec: CodecRaw, Ranges: []PatchRange{}, Data: []byte{}},
			`0000000000000008 | 00 | 00000000 | 00000000`},
		{"WELCOME patches", Welcome{State: TargetCommitted, Receiver: "r", HasBase: true, AcceptsPatch: true},
			`0000000000000000 | ` + ids("00") + ` | 01 | 01 72 | 0000000000000000 | 00 | 03`},
		{"RESULT", Result{Generation: 3, Root: idOf(0xdd), Skipped: 1, Copied: 2, Fetched: 3, Zeroed: 4, CopyBytes: 5, FetchBytes: 6},
			`0000000000000003 | ` + ids("dd") + ` |
			 0000000000000001 | 0000000000000002 | 0000000000000003 | 0000000000000004 | 0000000000000005 | 0000000000000006`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := unhex(t, tc.hex)
			got := encode(tc.msg)
			if !bytes.Equal(got, want) {
				t.Fatalf("encoding differs\n got %x\nwant %x", got, want)
			}
			m, err := Decode(tc.msg.FrameType(), want)
			if err != nil {
				t.Fatalf("decode golden: %v", err)
			}
			if !equalMsg(m, tc.msg) {
				t.Fatalf("decoded %#v, want %#v", m, tc.msg)
			}
		})
	}
}

func TestGoldenFrameHeader(t *testing.T) {
	got := AppendFrameHeader([]byte{0xee}, FrameChunk, 0x010203)
	if want := unhex(t, "ee | 09 | 00 | 00010203"); !bytes.Equal(got, want) {
		t.Fatalf("header %x, want %x", got, want)
	}
	if HeaderSize != 6 || ChunkHeaderSize != 13 || chunk.EntrySize != 49 {
		t.Fatalf("sizes changed: header %d, chunk header %d, entry %d", HeaderSize, ChunkHeaderSize, chunk.EntrySize)
	}
	// HELLO's size is 48 + volume + algorithm + agent + image (spec.md).
	h := Hello{Version: ProtocolVersion, Volume: "v", Params: chunk.DefaultParams(), Agent: "ag", Image: "img"}
	if n, want := len(encode(h)), 48+1+len(chunk.Algorithm)+2+3; n != want {
		t.Fatalf("HELLO is %d bytes, spec says %d", n, want)
	}
	// WELCOME's is 52 + receiver + image.
	w := Welcome{Receiver: "rcv", Image: "im"}
	if n, want := len(encode(w)), 52+3+2; n != want {
		t.Fatalf("WELCOME is %d bytes, spec says %d", n, want)
	}
	if n := len(encode(BaseGet{})); n != 32 {
		t.Fatalf("BASE_GET is %d bytes, spec says 32", n)
	}
	if n := len(encode(ManifestCopy{})); n != 16 {
		t.Fatalf("MANIFEST_COPY is %d bytes, spec says 16", n)
	}
	if n := len(encode(Result{})); n != 88 {
		t.Fatalf("RESULT is %d bytes, spec says 88", n)
	}
}

func TestRoundTripEveryMessage(t *testing.T) {
	seen := map[FrameType]bool{}
	for _, m := range sampleMessages() {
		t.Run(m.FrameType().String(), func(t *testing.T) {
			seen[m.FrameType()] = true
			payload := encode(m)
			got, err := Decode(m.FrameType(), payload)
			if err != nil {
				t.Fatalf("decode %#v: %v", m, err)
			}
			if got.FrameType() != m.FrameType() {
				t.Fatalf("decoded a %v from a %v payload", got.FrameType(), m.FrameType())
			}
			if !equalMsg(got, m) {
				t.Fatalf("round trip\n got %#v\nwant %#v", got, m)
			}
			// Appending keeps what dst held.
			if b := m.AppendPayload([]byte("prefix")); !bytes.Equal(b, append([]byte("prefix"), payload...)) {
				t.Fatalf("AppendPayload does not append")
			}
		})
	}
	for ft := FrameHello; ft <= FrameManifestCopy; ft++ {
		if !seen[ft] {
			t.Errorf("no sample of %v", ft)
		}
	}
}

func TestDecodeRejectsTruncated(t *testing.T) {
	for _, m := range sampleMessages() {
		payload := encode(m)
		min := 0
		if c, ok := m.(Chunk); ok && c.Codec == CodecZstd {
			min = ChunkHeaderSize // zstd data is opaque to Decode: any tail is a payload
			if len(payload) < min {
				continue
			}
			payload = payload[:min]
			min = 0
		}
		// A message cut just before its optional trailer (HELLO's group,
		// WELCOME's rounds, DATA_OPEN's control stream) is that message
		// without it: the only cut that decodes.
		trailer, bare := -1, Message(nil)
		switch v := m.(type) {
		case Hello:
			if v.Group != nil {
				v.Group = nil
				trailer, bare = len(encode(v)), v
			}
		case Welcome:
			if v.Rounds != 0 {
				v.Rounds = 0
				trailer, bare = len(encode(v)), v
			}
		case DataOpen:
			if v.Control != 0 {
				v.Control = 0
				trailer, bare = len(encode(v)), v
			}
		}
		for n := min; n < len(payload); n++ {
			if n == trailer {
				if got, err := Decode(m.FrameType(), payload[:n]); err != nil || !equalMsg(got, bare) {
					t.Errorf("%v cut before its trailer: %#v, %v", m.FrameType(), got, err)
				}
				continue
			}
			if got, err := Decode(m.FrameType(), payload[:n]); err == nil {
				t.Errorf("%v cut to %d of %d bytes decoded as %#v", m.FrameType(), n, len(payload), got)
			} else if !errors.Is(err, ErrProtocol) {
				t.Errorf("%v cut to %d bytes: %v does not wrap ErrProtocol", m.FrameType(), n, err)
			}
		}
	}
}

func TestDecodeRejectsStrayBytes(t *testing.T) {
	for _, m := range sampleMessages() {
		if c, ok := m.(Chunk); ok && c.Codec == CodecZstd {
			continue // data runs to the end of the payload
		}
		for _, tail := range [][]byte{{0}, []byte("xyz"), make([]byte, 49)} {
			payload := append(encode(m), tail...)
			if got, err := Decode(m.FrameType(), payload); err == nil {
				t.Errorf("%v with %d stray bytes decoded as %#v", m.FrameType(), len(tail), got)
			} else if !errors.Is(err, ErrProtocol) {
				t.Errorf("%v with stray bytes: %v does not wrap ErrProtocol", m.FrameType(), err)
			}
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	entry := func(e chunk.Entry, flags byte) []byte {
		b := chunk.AppendEntry(nil, e)
		b[16] = flags
		return b
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	bigRaw := make([]byte, chunk.MaxChunkSize+1)
	helloImage := encode(Hello{Version: ProtocolVersion, Params: chunk.DefaultParams(), Image: "abc"})
	helloGroup := func(name string, members uint16, flags byte) []byte {
		b := encode(Hello{Version: ProtocolVersion, Params: chunk.DefaultParams(), Group: &Group{Name: name, Members: members}})
		b[len(b)-1] = flags
		return b
	}
	welcomeFlags := func(f byte) []byte {
		b := encode(Welcome{State: TargetCommitted, HasBase: true})
		b[len(b)-1] = f
		return b
	}
	cases := []struct {
		name    string
		t       FrameType
		payload []byte
		want    string // in the error message
	}{
		{"unknown type 0", 0, nil, "unknown frame type 0"},
		{"unknown type 15", 15, []byte{1, 2}, "unknown frame type 15"},
		{"MANIFEST_NEXT count", FrameManifestNext, []byte{0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 9}, "2 entries in 9 bytes"},
		{"MANIFEST_NEXT flags", FrameManifestNext, []byte{0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 9}, "unknown flags 0x2"},
		{"MANIFEST_NEXT empty run", FrameManifestNext, []byte{0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0}, "empty"},
		{"MANIFEST_NEXT huge chunk", FrameManifestNext, cat([]byte{0, 0, 0, 1, 0, 0x01, 0, 0, 0}, make([]byte, 32)), "16777216-byte chunk"},
		{"MANIFEST_NEXT overflow", FrameManifestNext, []byte{0, 0, 0, 2, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0, 0, 0, 0, 1}, "past 2^64"},
		{"MANIFEST_NEXT stray", FrameManifestNext, []byte{0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 9, 7}, "stray"},
		{"unknown type 255", 255, nil, "unknown frame type 255"},
		{"HELLO bad magic", FrameHello, cat([]byte("HTTP"), encode(sampleMessages()[0])[4:]), "not a voldelta agent"},
		{"HELLO GET request", FrameHello, []byte("GET / HTTP/1.1\r\n"), "not a voldelta agent"},
		{"HELLO lowercase magic", FrameHello, cat([]byte("vdlt"), []byte{0, 1}), "not a voldelta agent"},
		{"HELLO short magic", FrameHello, []byte("VD"), "truncated"},
		{"HELLO params truncated", FrameHello, cat([]byte("VDLT"), []byte{0, 2, 1, 'v'}, make([]byte, 8), []byte{5, 'a'}), "HELLO"},
		// The version-1 layout (no image) claiming to be this version.
		{"HELLO v1 layout as v2", FrameHello, helloV1Layout(t, ProtocolVersion), "truncated"},
		{"HELLO image cut", FrameHello, helloImage[:len(helloImage)-1], "truncated"},
		{"HELLO group cut", FrameHello, helloGroup("g", 2, 0)[:len(helloGroup("g", 2, 0))-1], "truncated"},
		{"HELLO group flags", FrameHello, helloGroup("g", 2, 0x04), "unknown flags 0x4"},
		{"HELLO group no name", FrameHello, helloGroup("", 2, 1), "group name"},
		{"HELLO group bad name", FrameHello, helloGroup("../x", 2, 1), "group name"},
		{"HELLO group of 0", FrameHello, helloGroup("g", 0, 1), "0 members"},
		{"HELLO group of 65", FrameHello, helloGroup("g", 65, 1), "65 members"},
		{"HELLO group stray", FrameHello, append(helloGroup("g", 2, 1), 0), "stray"},
		{"WELCOME state 3", FrameWelcome, encode(Welcome{State: 3}), "unknown target state 3"},
		{"WELCOME rounds cut", FrameWelcome, append(encode(Welcome{State: TargetNew}), 0), "truncated"},
		{"WELCOME rounds 0", FrameWelcome, append(encode(Welcome{State: TargetNew}), 0, 0), "0 rounds"},
		{"WELCOME rounds 65", FrameWelcome, append(encode(Welcome{State: TargetNew}), 0, 65), "65 rounds"},
		{"WELCOME rounds stray", FrameWelcome, append(encode(Welcome{State: TargetNew, Rounds: 2}), 0), "stray"},
		{"DATA_OPEN control cut", FrameDataOpen, []byte{0, 1, 0, 0, 1}, "truncated"},
		{"DATA_OPEN control 0", FrameDataOpen, []byte{0, 1, 0, 0, 0, 0}, "control stream 0"},
		{"DATA_OPEN control stray", FrameDataOpen, []byte{0, 1, 0, 0, 0, 1, 9}, "stray"},
		{"WELCOME flag bit 2", FrameWelcome, welcomeFlags(0x04), "unknown flags 0x4"},
		{"CHUNK_PATCH ranges overlap", FrameChunkPatch, encode(ChunkPatch{Index: 1, RawLen: 4, Ranges: []PatchRange{{0, 2}, {1, 2}}, Data: []byte("abcd")}), "out of order"},
		{"CHUNK_PATCH empty range", FrameChunkPatch, encode(ChunkPatch{Index: 1, RawLen: 0, Ranges: []PatchRange{{0, 0}}}), "empty"},
		{"CHUNK_PATCH past a chunk", FrameChunkPatch, encode(ChunkPatch{Index: 1, RawLen: 2, Ranges: []PatchRange{{chunk.MaxChunkSize - 1, 2}}, Data: []byte("ab")}), "past the largest chunk"},
		{"CHUNK_PATCH sum", FrameChunkPatch, encode(ChunkPatch{Index: 1, RawLen: 3, Ranges: []PatchRange{{0, 2}}, Data: []byte("abc")}), "hold 2 bytes, says 3"},
		{"CHUNK_PATCH raw length", FrameChunkPatch, encode(ChunkPatch{Index: 1, RawLen: 2, Ranges: []PatchRange{{0, 2}}, Data: []byte("abc")}), "has 3 bytes"},
		{"CHUNK_PATCH codec", FrameChunkPatch, encode(ChunkPatch{Index: 1, Codec: 9, RawLen: 2, Ranges: []PatchRange{{0, 2}}, Data: []byte("ab")}), "unknown codec"},
		{"CHUNK_PATCH huge count", FrameChunkPatch, cat(make([]byte, 9), []byte{0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff}), "ranges in"},
		{"WELCOME flags 0x81", FrameWelcome, welcomeFlags(0x81), "unknown flags 0x81"},
		{"WELCOME v1 layout", FrameWelcome, unhex(t, `0000000000000002 | `+strings.Repeat("aa", 32)+` | 01 | 06 726563762f31`), "truncated"},
		{"BASE_GET short", FrameBaseGet, make([]byte, 31), "BASE_GET payload truncated"},
		{"MANIFEST_COPY count 0", FrameManifestCopy, encode(ManifestCopy{First: 5, Count: 0}), "5+0 is empty"},
		{"MANIFEST_COPY overflows", FrameManifestCopy, encode(ManifestCopy{First: 1<<64 - 1, Count: 2}), "overflows"},
		{"MANIFEST_COPY wraps to 0", FrameManifestCopy, encode(ManifestCopy{First: 1, Count: 1<<64 - 1}), "overflows"},
		{"MANIFEST_COPY short", FrameManifestCopy, make([]byte, 15), "MANIFEST_COPY payload truncated"},
		{"ERROR message too long", FrameError, cat([]byte{0, 1, 0x10, 0x01}, make([]byte, 4097)), "limit 4096"},
		{"MANIFEST count too high", FrameManifest, cat([]byte{0, 0, 0, 2}, make([]byte, 49)), "2 entries in 49 bytes"},
		{"MANIFEST count huge", FrameManifest, cat([]byte{0xff, 0xff, 0xff, 0xff}, make([]byte, 49)), "entries in 49 bytes"},
		{"MANIFEST entry flags", FrameManifest, cat([]byte{0, 0, 0, 1}, entry(chunk.Entry{Length: 1}, 2)), "entry 0"},
		{"MANIFEST zero run with id", FrameManifest, cat([]byte{0, 0, 0, 1}, entry(chunk.Entry{Length: 1, ID: idOf(1)}, 1)), "zero run with an id"},
		{"NEED zero-count range", FrameNeed, encode(Need{Ranges: []IndexRange{{First: 1, Count: 1}, {First: 5, Count: 0}}}), "range 1 (5+0) is empty"},
		{"NEED overflowing range", FrameNeed, encode(Need{Ranges: []IndexRange{{First: 1<<64 - 1, Count: 2}}}), "overflows"},
		{"NEED count huge", FrameNeed, cat([]byte{0xff, 0xff, 0xff, 0xff}, make([]byte, 12)), "ranges in 12 bytes"},
		{"CHUNK raw above max", FrameChunk, encode(Chunk{Index: 1, RawLen: chunk.MaxChunkSize + 1, Data: bigRaw}), "above the largest chunk"},
		{"CHUNK zstd above max", FrameChunk, encode(Chunk{Index: 1, Codec: CodecZstd, RawLen: chunk.MaxChunkSize + 1, Data: []byte{1}}), "above the largest chunk"},
		{"CHUNK zstd rawlen max u32", FrameChunk, encode(Chunk{Index: 1, Codec: CodecZstd, RawLen: 1<<32 - 1, Data: []byte{1}}), "above the largest chunk"},
		{"CHUNK raw short", FrameChunk, encode(Chunk{Index: 2, RawLen: 10, Data: make([]byte, 9)}), "has 9 bytes, says 10"},
		{"CHUNK raw long", FrameChunk, encode(Chunk{Index: 2, RawLen: 10, Data: make([]byte, 11)}), "has 11 bytes, says 10"},
		{"CHUNK unknown codec", FrameChunk, encode(Chunk{Index: 3, Codec: 2, RawLen: 1, Data: []byte{1}}), "unknown codec 2"},
		{"CHUNK header truncated", FrameChunk, make([]byte, ChunkHeaderSize-1), "truncated"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Decode(tc.t, tc.payload)
			if err == nil {
				t.Fatalf("decoded as %#v", m)
			}
			if !errors.Is(err, ErrProtocol) {
				t.Errorf("%v does not wrap ErrProtocol", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
		})
	}
}

// helloV1Layout is the HELLO a protocol-1 agent sends (spec.md of version
// 1: no image after the agent string), with its version field set to v.
func helloV1Layout(t testing.TB, v uint16) []byte {
	b := unhex(t, `56444c54 | 0001 | 05 7076632d31 | 0000000040000000 |
		13 726162696e2d7365672f626c616b65332f7631 | 003da3358b4dc173 | 00010000 | 00040000 | 00100000 | 0000000004000000 |
		0004 | 07 6167656e742f31`)
	b[4], b[5] = byte(v>>8), byte(v)
	return b
}

// An agent of another version is told apart from a stray client, and its
// version is decoded whatever follows it, so the receiver can name it.
func TestDecodeHelloOtherVersion(t *testing.T) {
	cases := []struct {
		name    string
		payload []byte
		version uint16
	}{
		{"v1 agent", helloV1Layout(t, 1), 1},
		{"v1, this version's layout", encode(Hello{Version: 1, Volume: "pvc-1", Params: chunk.DefaultParams(), Image: "img"}), 1},
		{"v3, this version's layout", encode(Hello{Version: 3, Volume: "pvc-1", Params: chunk.DefaultParams(), Image: "img"}), 3},
		{"v3, unknown layout", append([]byte("VDLT\x00\x03"), []byte("\xff\xfe anything at all")...), 3},
		{"v0, nothing after", []byte("VDLT\x00\x00"), 0},
		{"v65535", []byte("VDLT\xff\xff\x01"), 65535},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Decode(FrameHello, tc.payload)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			h, ok := m.(Hello)
			if !ok {
				t.Fatalf("decoded a %T", m)
			}
			if h != (Hello{Version: tc.version}) {
				t.Fatalf("decoded %#v, want only version %d", h, tc.version)
			}
		})
	}
}

// Strings too long for their length field are cut, never allowed to
// corrupt the fields after them.
func TestEncodeTruncatesLongStrings(t *testing.T) {
	long := strings.Repeat("é", 200) // 400 bytes, two per rune
	h := Hello{Version: ProtocolVersion, Volume: "pvc-1", Size: 42, Params: chunk.DefaultParams(), Streams: 3, Agent: long}
	m, err := Decode(FrameHello, encode(h))
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	got := m.(Hello)
	if got.Size != 42 || got.Streams != 3 || got.Params != h.Params {
		t.Fatalf("fields after a long string were corrupted: %#v", got)
	}
	if len(got.Agent) != 254 || !strings.HasPrefix(long, got.Agent) || !utf8.ValidString(got.Agent) {
		t.Fatalf("agent cut to %d bytes (valid UTF-8: %v), want the first 254 bytes of it", len(got.Agent), utf8.ValidString(got.Agent))
	}

	w := Welcome{State: TargetNew, Receiver: strings.Repeat("r", 300), Size: 7, Image: strings.Repeat("i", 256), HasBase: true}
	m, err = Decode(FrameWelcome, encode(w))
	if err != nil {
		t.Fatalf("decode WELCOME: %v", err)
	}
	gw := m.(Welcome)
	if gw.Receiver != strings.Repeat("r", 255) || gw.Image != strings.Repeat("i", 255) {
		t.Fatalf("receiver cut to %d bytes, image to %d, want 255 each", len(gw.Receiver), len(gw.Image))
	}
	if gw.Size != 7 || !gw.HasBase {
		t.Fatalf("fields after a long string were corrupted: %#v", gw)
	}

	h = Hello{Version: ProtocolVersion, Params: chunk.DefaultParams(), Streams: 2, Agent: long, Image: long}
	m, err = Decode(FrameHello, encode(h))
	if err != nil {
		t.Fatalf("decode HELLO with a long image: %v", err)
	}
	if got := m.(Hello); got.Image != got.Agent || len(got.Image) != 254 || got.Streams != 2 {
		t.Fatalf("image cut to %d bytes, want 254 like the agent: %#v", len(got.Image), got)
	}

	e := ErrorMsg{Code: ErrCodeApply, Message: strings.Repeat("x", 4095) + "€€"}
	m, err = Decode(FrameError, encode(e))
	if err != nil {
		t.Fatalf("decode ERROR: %v", err)
	}
	if msg := m.(ErrorMsg).Message; msg != strings.Repeat("x", 4095) {
		t.Fatalf("message cut to %d bytes, want 4095 (no split rune)", len(msg))
	}
}

func TestFrameTypeString(t *testing.T) {
	want := []string{"HELLO", "WELCOME", "ERROR", "MANIFEST", "MANIFEST_END", "NEED", "NEED_END", "DATA_OPEN", "CHUNK", "RESULT",
		"BASE_GET", "MANIFEST_COPY"}
	for i, w := range want {
		if s := FrameType(i + 1).String(); s != w {
			t.Errorf("FrameType(%d) = %q, want %q", i+1, s, w)
		}
	}
	if s := FrameType(42).String(); s != "FrameType(42)" {
		t.Errorf("unknown type prints %q", s)
	}
	for s, want := range map[TargetState]string{TargetNew: "new", TargetCommitted: "committed", TargetIncomplete: "incomplete", 9: "TargetState(9)"} {
		if s.String() != want {
			t.Errorf("TargetState(%d) = %q, want %q", uint8(s), s.String(), want)
		}
	}
}
