// Package k8stest runs a real control plane for tests: etcd and a
// kube-apiserver on loopback, in temporary directories, with our CRDs, the
// VolumeSnapshot CRDs and a trimmed Longhorn Volume CRD installed; and
// writes fake Longhorn replica directories.
//
// etcd comes from $VOLDELTA_ETCD, $PATH or Debian's etcd-server package;
// kube-apiserver from scripts/ensure-kube-apiserver.sh (cached under
// $XDG_CACHE_HOME/voldelta/bin). Start fails, it never skips, when either
// is missing: `make tools` provides both.
package k8stest
