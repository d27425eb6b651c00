// Package k8sutil builds what the node agent's and the receiver's
// controller managers share: the manager with its metrics and health
// endpoints, and the typed and dynamic clients.
package k8sutil
