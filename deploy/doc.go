// Package deploy holds voldelta's Kubernetes manifests (kustomize bases for
// the node agent and the receiver, RBAC, CRDs, examples); its test checks
// that they are complete and decode strictly into their Go types.
package deploy
