package snapmeta

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/kubernetes-csi/external-snapshot-metadata/pkg/api"

	"github.com/voldelta/voldelta/chunk"
	"github.com/voldelta/voldelta/csi"
	"github.com/voldelta/voldelta/hint"
)

type resp struct {
	typ      api.BlockMetadataType
	capacity int64
	md       [][2]int64
}

func (r resp) metadata() []*api.BlockMetadata {
	out := make([]*api.BlockMetadata, len(r.md))
	for i, m := range r.md {
		out[i] = &api.BlockMetadata{ByteOffset: m[0], SizeBytes: m[1]}
	}
	return out
}

const (
	fixed    = api.BlockMetadataType_FIXED_LENGTH
	variable = api.BlockMetadataType_VARIABLE_LENGTH
)

func TestBlocksToExtents(t *testing.T) {
	for _, tc := range []struct {
		name  string
		resps []resp
		size  uint64
		want  []chunk.Extent
	}{
		{"no responses", nil, 1 << 20, []chunk.Extent{}},
		{"empty response", []resp{{fixed, 1 << 20, nil}}, 1 << 20, []chunk.Extent{}},
		{"fixed blocks merge when adjacent, across responses", []resp{
			{fixed, 1 << 20, [][2]int64{{0, 4096}, {4096, 4096}, {16384, 4096}}},
			{fixed, 1 << 20, [][2]int64{{20480, 4096}, {65536, 4096}}},
		}, 1 << 20, []chunk.Extent{ext(0, 8192), ext(16384, 8192), ext(65536, 4096)}},
		{"variable blocks", []resp{
			{variable, 1 << 20, [][2]int64{{100, 900}, {1000, 24}, {5000, 1}}},
		}, 1 << 20, []chunk.Extent{ext(100, 924), ext(5000, 1)}},
		{"clipped to a smaller image", []resp{
			{variable, 1 << 20, [][2]int64{{0, 10}, {4000, 200}, {8192, 1}}},
		}, 4096, []chunk.Extent{ext(0, 10), ext(4000, 96)}},
		{"an image larger than the capacity: the rest is changed", []resp{
			{fixed, 8192, [][2]int64{{0, 4096}}},
		}, 10000, []chunk.Extent{ext(0, 4096), ext(8192, 10000-8192)}},
		{"the last block reaches the capacity and the image goes on", []resp{
			{fixed, 8192, [][2]int64{{4096, 4096}}},
		}, 10000, []chunk.Extent{ext(4096, 10000-4096)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b blocks
			for _, r := range tc.resps {
				if err := b.add(r.typ, r.capacity, r.metadata()); err != nil {
					t.Fatal(err)
				}
			}
			got, err := b.extents(tc.size)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("extents %v, want %v", got, tc.want)
			}
		})
	}
}

func TestMalformedBlocksAreInvalid(t *testing.T) {
	for _, tc := range []struct {
		name  string
		resps []resp
		want  string
	}{
		{"unknown type", []resp{{api.BlockMetadataType_UNKNOWN, 1 << 20, nil}}, "block metadata type"},
		{"no capacity", []resp{{fixed, 0, nil}}, "volume capacity 0"},
		{"type changes", []resp{{fixed, 1 << 20, nil}, {variable, 1 << 20, nil}}, "same stream"},
		{"capacity changes", []resp{{fixed, 1 << 20, nil}, {fixed, 1 << 21, nil}}, "same stream"},
		{"negative offset", []resp{{variable, 1 << 20, [][2]int64{{-1, 10}}}}, "offset -1"},
		{"empty block", []resp{{variable, 1 << 20, [][2]int64{{0, 0}}}}, "size 0"},
		{"past the capacity", []resp{{variable, 4096, [][2]int64{{4000, 97}}}}, "runs past the volume capacity"},
		{"overflow", []resp{{variable, 4096, [][2]int64{{4000, 1<<63 - 1}}}}, "runs past the volume capacity"},
		{"unsorted", []resp{{variable, 1 << 20, [][2]int64{{8192, 10}, {0, 10}}}}, "overlaps or precedes"},
		{"overlapping", []resp{{variable, 1 << 20, [][2]int64{{0, 100}, {50, 100}}}}, "overlaps or precedes"},
		{"unsorted across responses", []resp{{fixed, 1 << 20, [][2]int64{{8192, 4096}}}, {fixed, 1 << 20, [][2]int64{{0, 4096}}}}, "overlaps or precedes"},
		{"fixed sizes differ", []resp{{fixed, 1 << 20, [][2]int64{{0, 4096}, {8192, 8192}}}}, "FIXED_LENGTH block of 8192 bytes after blocks of 4096"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b blocks
			var err error
			for _, r := range tc.resps {
				if err = b.add(r.typ, r.capacity, r.metadata()); err != nil {
					break
				}
			}
			if !errors.Is(err, hint.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want ErrInvalid saying %q", err, tc.want)
			}
		})
	}
	var b blocks
	if err := b.add(fixed, 4096, []*api.BlockMetadata{nil}); !errors.Is(err, hint.ErrInvalid) {
		t.Fatalf("a nil tuple: %v", err)
	}
}

func TestIdentity(t *testing.T) {
	if got := Identity("ebs.csi.aws.com", "snap-0123"); got != "csi:ebs.csi.aws.com/snap-0123" {
		t.Fatal(got)
	}
	if got := SnapshotIdentity(csi.SnapshotResult{Driver: "d", Handle: "h/1"}); got != "csi:d/h/1" {
		t.Fatal(got)
	}
}

func TestNewClientChecksOptions(t *testing.T) {
	if _, err := NewClient(Options{}); err == nil {
		t.Fatal("no clients accepted")
	}
}

func ext(off, n uint64) chunk.Extent { return chunk.Extent{Offset: off, Length: n} }
