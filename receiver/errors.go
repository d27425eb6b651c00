package receiver

import (
	"errors"
	"syscall"

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
	// ErrTargetFull: the target's filesystem, or the state directory, has
	// no space left (ENOSPC) or the quota is exhausted (EDQUOT). Not
	// retryable: someone must make room or grow the volume.
	ErrTargetFull = errors.New("no space left for the target")
	// ErrStateCorrupt: the volume's state file does not check out. The
	// receiver refuses the round rather than restart the generation count;
	// the message says how to recover.
	ErrStateCorrupt = errors.New("volume state corrupt")
	// ErrTargetClaimed: another volume's state already owns this target
	// (the same file or device under two names).
	ErrTargetClaimed = errors.New("target claimed by another volume")
	// ErrTargetGone: the target was deleted or replaced while a round wrote
	// it; nothing was committed.
	ErrTargetGone = errors.New("target deleted or replaced during the round")
	// ErrPromoted: the target was promoted with its group and released;
	// it takes no round until it is re-armed (Kubernetes mode: a
	// VolumeTarget's spec.rearm). Not retryable. Config.Resolve returns it.
	ErrPromoted = errors.New("target promoted")
	// ErrGroup: the round's group cannot be honoured, e.g. Promote sent to
	// a receiver without Config.Groups. Not retryable.
	ErrGroup = errors.New("group refused")
)

// failf returns an error that errors.Is kind, with the formatted message.
func failf(kind error, format string, a ...any) error {
	return errkind.Errorf(kind, format, a...)
}

// classifySpace gives err the kind ErrTargetFull if it says that where
// (the target, the state directory) has no space or quota left.
func classifySpace(err error, where string) error {
	if err == nil || errors.Is(err, ErrTargetFull) {
		return err
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return failf(ErrTargetFull, "%s has no space left: %w (make room or grow it, then sync again; the progress so far is kept)", where, err)
	}
	return err
}
