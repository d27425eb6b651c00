package objstore

import (
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/voldelta/voldelta/chunk"
)

// chunkMetaKey is the user metadata (x-amz-meta-voldelta-chunk) a push
// stores with every chunk object, so that a HEAD request tells an object
// voldelta wrote from one replaced, truncated or damaged since.
const chunkMetaKey = "Voldelta-Chunk"

// chunkMeta is what that metadata records:
//
//	v1 <codec> <raw length> <object length> <MD5 of the object, 32 hex>
//
// The MD5 is what S3 and MinIO report as the ETag of an unencrypted
// single-part object, so a HEAD compares the object's content with what
// was uploaded without downloading it.
type chunkMeta struct {
	codec  byte
	rawLen uint64
	objLen uint64
	md5    [md5.Size]byte
}

// metaOf returns the metadata of obj, the object of a chunk of rawLen bytes.
func metaOf(obj []byte, rawLen uint64) chunkMeta {
	m := chunkMeta{rawLen: rawLen, objLen: uint64(len(obj)), md5: md5.Sum(obj)}
	if len(obj) > 0 {
		m.codec = obj[0]
	}
	return m
}

func (m chunkMeta) String() string {
	return fmt.Sprintf("v1 %d %d %d %s", m.codec, m.rawLen, m.objLen, hex.EncodeToString(m.md5[:]))
}

// userMetadata returns m as the user metadata of a PUT or a copy.
func (m chunkMeta) userMetadata() map[string]string {
	return map[string]string{chunkMetaKey: m.String()}
}

// parseChunkMeta parses what chunkMeta.String returns; anything else, or a
// record no chunk object can have, is an error.
func parseChunkMeta(s string) (chunkMeta, error) {
	f := strings.Split(s, " ")
	if len(f) != 5 || f[0] != "v1" {
		return chunkMeta{}, fmt.Errorf("chunk metadata %q: want \"v1 CODEC RAWLEN OBJLEN MD5\"", s)
	}
	var m chunkMeta
	codec, err1 := strconv.ParseUint(f[1], 10, 8)
	raw, err2 := strconv.ParseUint(f[2], 10, 64)
	obj, err3 := strconv.ParseUint(f[3], 10, 64)
	sum, err4 := hex.DecodeString(f[4])
	if err1 != nil || err2 != nil || err3 != nil || err4 != nil || len(sum) != md5.Size || f[4] != hex.EncodeToString(sum) ||
		f[1] != strconv.FormatUint(codec, 10) || f[2] != strconv.FormatUint(raw, 10) || f[3] != strconv.FormatUint(obj, 10) {
		return chunkMeta{}, fmt.Errorf("chunk metadata %q: bad field", s)
	}
	m.codec, m.rawLen, m.objLen = byte(codec), raw, obj
	copy(m.md5[:], sum)
	if err := m.valid(); err != nil {
		return chunkMeta{}, fmt.Errorf("chunk metadata %q: %w", s, err)
	}
	return m, nil
}

// valid checks that a chunk object can have this metadata.
func (m chunkMeta) valid() error {
	switch {
	case m.rawLen == 0 || m.rawLen > chunk.MaxChunkSize:
		return fmt.Errorf("raw length %d out of range", m.rawLen)
	case m.codec == codecRaw && m.objLen != 1+m.rawLen:
		return fmt.Errorf("raw object of %d bytes for %d raw bytes", m.objLen, m.rawLen)
	case m.codec == codecZstd && (m.objLen < 2 || m.objLen > maxChunkObject):
		return fmt.Errorf("zstd object of %d bytes", m.objLen)
	case m.codec != codecRaw && m.codec != codecZstd:
		return fmt.Errorf("unknown codec %d", m.codec)
	}
	return nil
}

// checkChunkInfo compares what a HEAD of a chunk object returned with the
// manifest entry e it must hold; it returns why the object is not the one
// a push wrote for e, or "" when nothing says so. Only a download and a
// hash prove the content (PushOptions.VerifyChunks).
func checkChunkInfo(info minio.ObjectInfo, e chunk.Entry) string {
	v, ok := info.UserMetadata[chunkMetaKey]
	if !ok {
		return "it has no voldelta metadata: replaced since, or stored before voldelta recorded it"
	}
	m, err := parseChunkMeta(v)
	if err != nil {
		return err.Error()
	}
	switch {
	case m.rawLen != e.Length:
		return fmt.Sprintf("its metadata says %d raw bytes, the manifest %d", m.rawLen, e.Length)
	case info.Size != int64(m.objLen):
		return fmt.Sprintf("it is %d bytes, %d were uploaded", info.Size, m.objLen)
	}
	// An unencrypted single-part object's ETag is its MD5.
	etag := strings.ToLower(strings.Trim(info.ETag, `"`))
	if len(etag) == 2*md5.Size && info.Metadata.Get("X-Amz-Server-Side-Encryption") == "" &&
		info.Metadata.Get("X-Amz-Server-Side-Encryption-Customer-Algorithm") == "" {
		if _, err := hex.DecodeString(etag); err == nil && etag != hex.EncodeToString(m.md5[:]) {
			return fmt.Sprintf("its content's MD5 (ETag %s) is not the uploaded one's (%x)", etag, m.md5)
		}
	}
	return ""
}
