package objstore

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/transport"
)

func TestParseStoreURL(t *testing.T) {
	for _, tc := range []struct {
		in, bucket, prefix string
		ok                 bool
	}{
		{"s3://backups", "backups", "", true},
		{"s3://backups/", "backups", "", true},
		{"s3://backups/dc2/voldelta/", "backups", "dc2/voldelta", true},
		{"s3://my.bucket-1/p", "my.bucket-1", "p", true},
		{"backups/p", "", "", false},
		{"s3://", "", "", false},
		{"s3://Bad_Bucket/p", "", "", false},
		{"s3://b/a//c", "", "", false},
		{"https://backups/p", "", "", false},
	} {
		b, p, err := ParseStoreURL(tc.in)
		if (err == nil) != tc.ok || b != tc.bucket || p != tc.prefix {
			t.Errorf("ParseStoreURL(%q) = %q, %q, %v", tc.in, b, p, err)
		}
	}
}

func TestParseEndpoint(t *testing.T) {
	for _, tc := range []struct {
		in       string
		insecure bool
		want     string
		ok       bool
	}{
		{"minio.example:9000", false, "minio.example:9000", true},
		{"127.0.0.1:9000", true, "127.0.0.1:9000", true},
		{"s3.amazonaws.com", false, "s3.amazonaws.com", true},
		{"https://minio.example:9000", false, "minio.example:9000", true},
		{"https://minio.example/", false, "minio.example", true},
		{"http://127.0.0.1:9000", true, "127.0.0.1:9000", true},
		{"http://127.0.0.1:9000", false, "", false}, // plain HTTP only with --insecure
		{"https://minio.example", true, "", false},
		{"ftp://minio.example", false, "", false},
		{"https://minio.example/path", false, "", false},
		{"minio.example:http", false, "", false},
		{"minio.example:0", false, "", false},
		{"", false, "", false},
	} {
		got, err := ParseEndpoint(tc.in, tc.insecure)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseEndpoint(%q, %v) = %q, %v", tc.in, tc.insecure, got, err)
		}
	}
}

func TestChunkKeys(t *testing.T) {
	s := &Store{prefix: "p/"}
	id := chunk.Sum([]byte("x"))
	key := s.chunkKey(id)
	if key != "p/chunks/"+id.String()[:2]+"/"+id.String() {
		t.Fatal(key)
	}
	if got, ok := s.parseChunkKey(key); !ok || got != id {
		t.Fatal("chunk key does not parse back")
	}
	for _, bad := range []string{"p/chunks/zz/" + id.String(), "p/chunks/" + id.String(), "p/chunks/00/" + id.String(), "q/chunks/x"} {
		if _, ok := s.parseChunkKey(bad); ok {
			t.Errorf("parseChunkKey(%q) accepted", bad)
		}
	}
	mk := s.manifestKey("db", 42)
	if mk != "p/manifests/db/00000000000000000042" {
		t.Fatal(mk)
	}
	if v, g, ok := parseManifestKey(s.manifestsPrefix(), mk); !ok || v != "db" || g != 42 {
		t.Fatal("manifest key does not parse back")
	}
}

func TestChunkCodec(t *testing.T) {
	comp, err := transport.NewCompressor(transport.CompressionFastest)
	if err != nil {
		t.Fatal(err)
	}
	dec, err := newDecoder()
	if err != nil {
		t.Fatal(err)
	}
	defer dec.close()
	text := bytes.Repeat([]byte("voldelta chunk "), 4096)
	random := make([]byte, 64<<10)
	rand.NewChaCha8([32]byte{1}).Read(random)
	for name, raw := range map[string][]byte{"compressible": text, "random": random, "tiny": []byte("abc")} {
		obj := encodeChunk(comp, raw, nil)
		if wantZstd := name == "compressible"; (obj[0] == codecZstd) != wantZstd {
			t.Errorf("%s: codec %d", name, obj[0])
		}
		got, err := dec.decode(obj, uint64(len(raw)))
		if err != nil || !bytes.Equal(got, raw) {
			t.Errorf("%s: round trip: %v", name, err)
		}
		if _, err := dec.decode(obj, uint64(len(raw))-1); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: wrong length accepted: %v", name, err)
		}
	}
	for _, bad := range [][]byte{nil, {7, 1, 2}, {codecZstd, 1, 2, 3}} {
		if _, err := dec.decode(bad, 3); !errors.Is(err, ErrCorrupt) {
			t.Errorf("decode(%x): %v", bad, err)
		}
	}
}

// FuzzDecodeChunk: no object makes the decoder allocate more than the
// expected length, panic, or return other than exactly that many bytes.
func FuzzDecodeChunk(f *testing.F) {
	comp, _ := transport.NewCompressor(transport.CompressionFastest)
	f.Add(encodeChunk(comp, bytes.Repeat([]byte("ab"), 4096), nil), uint32(8192))
	f.Add([]byte{codecRaw, 1, 2, 3}, uint32(3))
	dec, err := newDecoder()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, obj []byte, n uint32) {
		out, err := dec.decode(obj, uint64(n))
		if err == nil && uint64(len(out)) != uint64(n) {
			t.Fatalf("decoded %d bytes, want %d", len(out), n)
		}
	})
}
