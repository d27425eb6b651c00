// Package e2e tests voldelta end to end: an agent and a receiver over real
// TCP (and TLS) on loopback, real files, block devices and processes. It
// has no code of its own; its tests are the acceptance criteria of the
// sync engine.
package e2e
