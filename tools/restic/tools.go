//go:build tools

// Package tools pins the restic client the benchmark harness (bench/)
// compares voldelta with. Build it with scripts/ensure-restic.sh (or
// `make tools`).
package tools

import _ "github.com/restic/restic/cmd/restic"
