// Package pki issues the small certificate authority, server and client
// certificates that voldelta's mutual TLS needs, for `voldelta certs`, the
// demo and tests. Production users may bring certificates from any CA.
package pki
