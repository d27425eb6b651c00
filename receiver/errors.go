package receiver

import (
	"errors"

	"github.com/voldelta/voldelta/internal/errkind"
)

// Errors an apply ends with, for callers to branch on (errors.Is). The
// network server maps them to the protocol's error codes.
var (
	// ErrUnknownVolume: the receiver has no target of that name.
	ErrUnknownVolume = errors.New("unknown volume")
	// ErrBusy: another apply holds the volume (retryable).
	ErrBusy = errors.New("volume busy")
	// ErrTooSmall: the block device is smaller than the source.
	ErrTooSmall = errors.New("target too small")
	// ErrBadInput: the sender's manifest or chunks broke the protocol.
	ErrBadInput = errors.New("bad input from the sender")
	// ErrSourceChanged: a chunk did not hash to its manifest entry; the
	// source changed while it was read (retryable, from a snapshot).
	ErrSourceChanged = errors.New("source changed while it was read")
	// ErrVerify: after the writes, the target did not verify against the
	// sender's root; nothing was committed.
	ErrVerify = errors.New("target verification failed")
	// ErrInterrupted: the sender went away before the apply completed; the
	// progress is journaled and the next apply resumes (retryable).
	ErrInterrupted = errors.New("apply interrupted")
	// ErrShutdown: the receiver is stopping (retryable).
	ErrShutdown = errors.New("receiver shutting down")
)

// failf returns an error that errors.Is kind, with the formatted message.
func failf(kind error, format string, a ...any) error {
	return errkind.Errorf(kind, format, a...)
}
