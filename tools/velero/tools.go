//go:build tools

// Package tools pins the Velero server (cmd/velero) that `make test-velero`
// runs against the test control plane, to back up and restore through
// voldelta's data mover. Velero v1.18.3 builds with the k8s.io modules at
// v0.37.2 and controller-runtime v0.25.2 (the proxy serves no v0.33 of
// k8s.io/cli-runtime) and, as Velero's own go.mod says, its fork of kopia.
// Build it with scripts/ensure-velero.sh.
package tools

import _ "github.com/vmware-tanzu/velero/cmd/velero"
