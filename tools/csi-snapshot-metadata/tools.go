//go:build tools

// Package tools pins the csi-snapshot-metadata sidecar (KEP-3314) that the
// CSI snapshot metadata integration test (csi/snapmeta) runs against. Build
// it with scripts/ensure-csi-snapshot-metadata.sh (or `make tools`).
package tools

import _ "github.com/kubernetes-csi/external-snapshot-metadata/cmd/csi-snapshot-metadata"
