package snapmeta

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// blockSize is the test driver's block: it compares images in 4 KiB blocks.
const blockSize = 4096

// driverMode is how the test driver lists changed blocks.
type driverMode int

const (
	fixedBlocks    driverMode = iota // FIXED_LENGTH, one tuple per 4 KiB block
	variableRuns                     // VARIABLE_LENGTH, one tuple per run of blocks
	unsortedBlocks                   // FIXED_LENGTH in descending order (malformed)
)

// testDriver is a CSI plugin with the Identity and SnapshotMetadata
// services, on a Unix socket, for the csi-snapshot-metadata sidecar: its
// snapshots are image files, and a delta is the 4 KiB blocks that differ.
type testDriver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedSnapshotMetadataServer
	name   string
	socket string

	mu        sync.Mutex
	snapshots map[string]string // handle -> image file
	mode      driverMode
	perResp   int // tuples per response when the request says 0
	deltas    []*csi.GetMetadataDeltaRequest
}

func startTestDriver(t *testing.T, name, dir string) *testDriver {
	t.Helper()
	d := &testDriver{name: name, socket: filepath.Join(dir, "csi.sock"), snapshots: map[string]string{}, perResp: 5}
	ln, err := net.Listen("unix", d.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	csi.RegisterIdentityServer(srv, d)
	csi.RegisterSnapshotMetadataServer(srv, d)
	done := make(chan struct{})
	go func() { srv.Serve(ln); close(done) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return d
}

func (d *testDriver) addSnapshot(handle, image string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.snapshots[handle] = image
}

func (d *testDriver) setMode(m driverMode) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.mode = m
}

// requests returns the GetMetadataDelta requests the sidecar made.
func (d *testDriver) requests() []*csi.GetMetadataDeltaRequest {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.deltas)
}

func (d *testDriver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: d.name, VendorVersion: "test"}, nil
}

func (d *testDriver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{{
		Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: csi.PluginCapability_Service_SNAPSHOT_METADATA_SERVICE}},
	}}}, nil
}

func (d *testDriver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

func (d *testDriver) image(handle string) ([]byte, error) {
	d.mu.Lock()
	path, ok := d.snapshots[handle]
	d.mu.Unlock()
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no snapshot %q", handle)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	return b, nil
}

// GetMetadataAllocated lists the blocks of the snapshot that are not zero.
func (d *testDriver) GetMetadataAllocated(req *csi.GetMetadataAllocatedRequest, stream csi.SnapshotMetadata_GetMetadataAllocatedServer) error {
	img, err := d.image(req.SnapshotId)
	if err != nil {
		return err
	}
	zero := make([]byte, blockSize)
	blocks := d.blocks(img, req.StartingOffset, func(off int64) bool {
		return !bytes.Equal(img[off:min(off+blockSize, int64(len(img)))], zero[:min(blockSize, int64(len(img))-off)])
	})
	return d.send(blocks, req.MaxResults, func(typ csi.BlockMetadataType, md []*csi.BlockMetadata) error {
		return stream.Send(&csi.GetMetadataAllocatedResponse{BlockMetadataType: typ, VolumeCapacityBytes: int64(len(img)), BlockMetadata: md})
	})
}

// GetMetadataDelta lists the blocks in which the target snapshot's image
// differs from the base's (blocks past the base's end count as changed).
func (d *testDriver) GetMetadataDelta(req *csi.GetMetadataDeltaRequest, stream csi.SnapshotMetadata_GetMetadataDeltaServer) error {
	d.mu.Lock()
	d.deltas = append(d.deltas, req)
	d.mu.Unlock()
	base, err := d.image(req.BaseSnapshotId)
	if err != nil {
		return err
	}
	target, err := d.image(req.TargetSnapshotId)
	if err != nil {
		return err
	}
	blocks := d.blocks(target, req.StartingOffset, func(off int64) bool {
		end := min(off+blockSize, int64(len(target)))
		return end > int64(len(base)) || !bytes.Equal(base[off:end], target[off:end])
	})
	return d.send(blocks, req.MaxResults, func(typ csi.BlockMetadataType, md []*csi.BlockMetadata) error {
		return stream.Send(&csi.GetMetadataDeltaResponse{BlockMetadataType: typ, VolumeCapacityBytes: int64(len(target)), BlockMetadata: md})
	})
}

// blocks returns the tuples of the blocks of img from the one holding
// start on for which pick holds, as the driver's mode lists them.
func (d *testDriver) blocks(img []byte, start int64, pick func(off int64) bool) []*csi.BlockMetadata {
	d.mu.Lock()
	mode := d.mode
	d.mu.Unlock()
	var out []*csi.BlockMetadata
	for off := start / blockSize * blockSize; off < int64(len(img)); off += blockSize {
		if !pick(off) {
			continue
		}
		size := min(blockSize, int64(len(img))-off)
		if n := len(out); mode == variableRuns && n > 0 && out[n-1].ByteOffset+out[n-1].SizeBytes == off {
			out[n-1].SizeBytes += size
			continue
		}
		out = append(out, &csi.BlockMetadata{ByteOffset: off, SizeBytes: size})
	}
	if mode == unsortedBlocks {
		slices.Reverse(out)
	}
	return out
}

// send streams blocks, max (or the driver's default) per response; at
// least one response, even if nothing changed.
func (d *testDriver) send(blocks []*csi.BlockMetadata, max int32, send func(csi.BlockMetadataType, []*csi.BlockMetadata) error) error {
	d.mu.Lock()
	mode, per := d.mode, d.perResp
	d.mu.Unlock()
	if max > 0 {
		per = int(max)
	}
	typ := csi.BlockMetadataType_FIXED_LENGTH
	if mode == variableRuns {
		typ = csi.BlockMetadataType_VARIABLE_LENGTH
	}
	for first := true; first || len(blocks) > 0; first = false {
		n := min(per, len(blocks))
		if err := send(typ, blocks[:n]); err != nil {
			if err == io.EOF {
				return nil
			}
			return fmt.Errorf("send: %w", err)
		}
		blocks = blocks[n:]
	}
	return nil
}
