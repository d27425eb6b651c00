package objstore

import (
	"bytes"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/voldelta/voldelta/chunk"
)

// The decoders of what comes from the store (manifests, keys in listings,
// chunk metadata) or from the user (store URLs, endpoints): none panics,
// and what one accepts encodes back to the same thing.

// FuzzDecodeManifest: a manifest object as read from the store decodes to
// a manifest that marshals back to the same bytes, or to ErrCorrupt.
func FuzzDecodeManifest(f *testing.F) {
	p := smallParams()
	for _, m := range []*chunk.Manifest{
		{Params: p},
		manifestOf(f, genVolume(1, 256<<10), p),
		manifestOf(f, make([]byte, 100<<10), p),
	} {
		b, err := m.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)-1])
	}
	f.Add([]byte("VDMANIF1"))
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := decodeManifest("fuzz", body)
		if err != nil {
			if m != nil || !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decodeManifest: %v, %v: want nil and ErrCorrupt", m, err)
			}
			return
		}
		for _, e := range m.Entries {
			if !e.Zero && (e.Length == 0 || e.Length > chunk.MaxChunkSize) {
				t.Fatalf("accepted a chunk of %d bytes", e.Length)
			}
		}
		back, err := m.MarshalBinary()
		if err != nil || !bytes.Equal(back, body) {
			t.Fatalf("accepted manifest does not marshal back to its bytes (%v)", err)
		}
	})
}

func manifestOf(f *testing.F, data []byte, p chunk.Params) *chunk.Manifest {
	m, _, err := chunk.ScanManifest(f.Context(), bytes.NewReader(data), uint64(len(data)), p, chunk.ScanOptions{})
	if err != nil {
		f.Fatal(err)
	}
	return m
}

// FuzzStoreKeys: a key in a listing parses as a chunk or a manifest key
// only if it is exactly the key of what it parses to.
func FuzzStoreKeys(f *testing.F) {
	s := &Store{prefix: "vd/dc1/"}
	id := chunk.Sum([]byte("x"))
	f.Add(s.chunkKey(id))
	f.Add(s.manifestKey("db", 42))
	f.Add("vd/dc1/manifests/db/00000000000000000000")
	f.Add("vd/dc1/chunks/zz/" + id.String())
	f.Add("vd/dc1/manifests/a/b/00000000000000000001")
	f.Fuzz(func(t *testing.T, key string) {
		if id, ok := s.parseChunkKey(key); ok && s.chunkKey(id) != key {
			t.Fatalf("chunk key %q parses to %s, whose key is %q", key, id, s.chunkKey(id))
		}
		if vol, gen, ok := parseManifestKey(s.manifestsPrefix(), key); ok {
			if gen == 0 || vol == "" || s.manifestKey(vol, gen) != key {
				t.Fatalf("manifest key %q parses to %q %d, whose key is %q", key, vol, gen, s.manifestKey(vol, gen))
			}
		}
	})
}

// FuzzParseStoreURL: an accepted s3://BUCKET/PREFIX gives a valid bucket
// and a clean prefix, and the URL made of them parses to the same.
func FuzzParseStoreURL(f *testing.F) {
	for _, s := range []string{"s3://backups", "s3://backups/dc2/voldelta/", "s3://my.bucket-1/p", "s3://b/a//c", "s3://Bad_Bucket/p", "https://b/p", "s3://"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		bucket, prefix, err := ParseStoreURL(s)
		if err != nil {
			if bucket != "" || prefix != "" {
				t.Fatalf("ParseStoreURL(%q) failed (%v) but returned %q, %q", s, err, bucket, prefix)
			}
			return
		}
		if bucket == "" || strings.HasPrefix(prefix, "/") || strings.HasSuffix(prefix, "/") || strings.Contains(prefix, "//") {
			t.Fatalf("ParseStoreURL(%q) = %q, %q", s, bucket, prefix)
		}
		canon := "s3://" + bucket
		if prefix != "" {
			canon += "/" + prefix
		}
		b2, p2, err := ParseStoreURL(canon)
		if err != nil || b2 != bucket || p2 != prefix {
			t.Fatalf("ParseStoreURL(%q) = %q, %q; its canonical form %q gives %q, %q, %v", s, bucket, prefix, canon, b2, p2, err)
		}
	})
}

// FuzzParseEndpoint: an accepted endpoint is HOST[:PORT] with a valid port,
// accepted again as it is.
func FuzzParseEndpoint(f *testing.F) {
	for _, s := range []string{"minio.example:9000", "127.0.0.1:9000", "https://minio.example/", "http://127.0.0.1:9000", "ftp://x", "[::1]:9000", "x:0", ""} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, s string, insecure bool) {
		host, err := ParseEndpoint(s, insecure)
		if err != nil {
			if host != "" {
				t.Fatalf("ParseEndpoint(%q) failed (%v) but returned %q", s, err, host)
			}
			return
		}
		if host == "" || strings.ContainsAny(host, "/ ") {
			t.Fatalf("ParseEndpoint(%q) = %q", s, host)
		}
		if h, p, err := net.SplitHostPort(host); err == nil {
			if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 || h == "" {
				t.Fatalf("ParseEndpoint(%q) = %q: bad port", s, host)
			}
		}
		if again, err := ParseEndpoint(host, insecure); err != nil || again != host {
			t.Fatalf("ParseEndpoint(%q) = %q, which gives %q, %v", s, host, again, err)
		}
	})
}

// FuzzChunkMeta: chunk object metadata (x-amz-meta-voldelta-chunk, from
// the store) parses only if it is exactly the encoding of a valid record.
func FuzzChunkMeta(f *testing.F) {
	obj := append([]byte{codecRaw}, bytes.Repeat([]byte("ab"), 100)...)
	f.Add(metaOf(obj, 200).String())
	f.Add("v1 1 4096 17 00112233445566778899aabbccddeeff")
	f.Add("v1 0 3 4 00112233445566778899AABBCCDDEEFF")
	f.Add("v2 0 3 4 x")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := parseChunkMeta(s)
		if err != nil {
			return
		}
		if m.String() != s {
			t.Fatalf("parseChunkMeta(%q) = %v, which encodes as %q", s, m, m.String())
		}
		if err := m.valid(); err != nil {
			t.Fatalf("parseChunkMeta(%q) accepted an invalid record: %v", s, err)
		}
	})
}
