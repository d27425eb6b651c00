//go:build tools

// Package tools pins the kube-controller-manager used by the Kubernetes
// integration tests (internal/k8stest). It is the same k8s.io/kubernetes
// version, with the same requirements and replacements, as
// tools/kube-apiserver, so the two builds share compiled packages in the Go
// build cache. Build it with scripts/ensure-kube-controller-manager.sh (or
// `make tools`).
package tools

import _ "k8s.io/kubernetes/cmd/kube-controller-manager"
