// Package k8sutil builds what the node agent's and the receiver's
// controller managers share: the manager with its metrics and health
// endpoints, the typed and dynamic clients, and object stores named by
// the custom resources (with their credentials Secrets).
package k8sutil
