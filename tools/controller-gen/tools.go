//go:build tools

// Package tools pins controller-gen, which generates the deepcopy methods
// of api/v1alpha1 and the CRD manifests in deploy/crds (`make generate`).
package tools

import _ "sigs.k8s.io/controller-tools/cmd/controller-gen"
