// Package errkind builds errors that belong to a kind (a sentinel error
// callers test with errors.Is) while keeping their own message and cause.
package errkind
