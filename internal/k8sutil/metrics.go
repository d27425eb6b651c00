package k8sutil

import (
	"crypto/tls"
	"crypto/x509"
	"time"
)

// CertificateExpiry returns the NotAfter of cfg's first certificate (the
// one this end presents), and false if cfg has none or it does not parse.
func CertificateExpiry(cfg *tls.Config) (time.Time, bool) {
	if cfg == nil || len(cfg.Certificates) == 0 {
		return time.Time{}, false
	}
	c := cfg.Certificates[0]
	if c.Leaf != nil {
		return c.Leaf.NotAfter, true
	}
	if len(c.Certificate) == 0 {
		return time.Time{}, false
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return time.Time{}, false
	}
	return leaf.NotAfter, true
}
