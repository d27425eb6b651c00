// Command voldelta is the single binary of voldelta: `send` (agent side,
// one sync round), `receive` (the receiver daemon), `hash` (root hash of a
// file or device), `status` (what a receiver's targets hold) and `certs`
// (a private CA and certificates for mutual TLS). It only parses flags and
// wires the packages together.
package main
