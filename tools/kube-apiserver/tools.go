//go:build tools

// Package tools pins the kube-apiserver used by the Kubernetes integration
// tests (internal/k8stest). Build it with scripts/ensure-kube-apiserver.sh
// (or `make tools`).
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
