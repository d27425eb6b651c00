//go:build tools

// Package tools pins the MinIO server used by the object-store tests.
// Build it with scripts/ensure-minio.sh (or `make tools`).
package tools

import _ "github.com/minio/minio"
