//go:build tools

// Package tools pins helm, which lints and renders the chart in
// charts/voldelta (`make test`: deploy's chart test, the Kubernetes
// integration test). Build it with scripts/ensure-helm.sh (or `make tools`).
package tools

import _ "helm.sh/helm/v3/cmd/helm"
