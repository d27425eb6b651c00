//go:build tools

// Package tools pins Velero's AWS object store plugin, which the Velero
// server of `make test-velero` reads and writes its backup storage location
// (a MinIO) with. Build it with scripts/ensure-velero.sh.
package tools

import _ "github.com/vmware-tanzu/velero-plugin-for-aws/velero-plugin-for-aws"
