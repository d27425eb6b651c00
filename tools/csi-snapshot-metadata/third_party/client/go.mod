module github.com/kubernetes-csi/external-snapshot-metadata/client

go 1.25.8

require (
	k8s.io/apimachinery v0.36.1
	k8s.io/client-go v0.36.1
)
