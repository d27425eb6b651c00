package transport

import (
	"errors"
	"fmt"
	"regexp"
)

// ErrorCode classifies an ERROR frame so the other end can branch on it.
type ErrorCode uint16

// Error codes; see spec.md.
const (
	ErrCodeProtocol     ErrorCode = 1  // malformed frame or unexpected message
	ErrCodeVersion      ErrorCode = 2  // protocol versions differ
	ErrCodeUnknown      ErrorCode = 3  // no target of that volume name
	ErrCodeBusy         ErrorCode = 4  // another session is syncing this volume
	ErrCodeTooSmall     ErrorCode = 5  // the block device is smaller than the source
	ErrCodeParams       ErrorCode = 6  // chunk parameters rejected
	ErrCodeApply        ErrorCode = 7  // writing the target failed
	ErrCodeVerify       ErrorCode = 8  // the target does not hash to the agent's root
	ErrCodeForbidden    ErrorCode = 9  // the client identity may not write this target
	ErrCodeSourceChange ErrorCode = 10 // chunk bytes did not match the manifest: the source changed while being read
	ErrCodeShutdown     ErrorCode = 11 // the receiver is shutting down
	ErrCodeCanceled     ErrorCode = 12 // the agent gave up
	ErrCodeTargetFull   ErrorCode = 13 // the target's filesystem or the state directory is full (ENOSPC, EDQUOT)
	ErrCodeTargetState  ErrorCode = 14 // the receiver's state for the volume is corrupt or the target is claimed or gone: an operator must act
	ErrCodePromoted     ErrorCode = 15 // the target was promoted with its group and is released: no rounds until it is re-armed
	ErrCodeGroup        ErrorCode = 16 // the HELLO's group cannot be honoured (e.g. Promote to a receiver that cannot promote)
)

var codeNames = map[ErrorCode]string{
	ErrCodeProtocol: "protocol", ErrCodeVersion: "version", ErrCodeUnknown: "unknown volume",
	ErrCodeBusy: "busy", ErrCodeTooSmall: "target too small", ErrCodeParams: "chunk parameters",
	ErrCodeApply: "apply failed", ErrCodeVerify: "verification failed", ErrCodeForbidden: "forbidden",
	ErrCodeSourceChange: "source changed", ErrCodeShutdown: "shutting down", ErrCodeCanceled: "canceled",
	ErrCodeTargetFull: "target full", ErrCodeTargetState: "target state",
	ErrCodePromoted: "promoted", ErrCodeGroup: "group refused",
}

func (c ErrorCode) String() string {
	if s, ok := codeNames[c]; ok {
		return s
	}
	return fmt.Sprintf("error %d", uint16(c))
}

// Retryable reports whether a session that ended with c may succeed if
// started again unchanged.
func (c ErrorCode) Retryable() bool {
	switch c {
	case ErrCodeBusy, ErrCodeShutdown, ErrCodeSourceChange, ErrCodeApply, ErrCodeVerify:
		return true
	}
	return false
}

// RemoteError is an ERROR frame received from the peer.
type RemoteError struct {
	Code    ErrorCode
	Message string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("peer reported %s: %s", e.Code, e.Message)
}

// Is makes errors.Is(err, &RemoteError{Code: c}) match any RemoteError with code c.
func (e *RemoteError) Is(target error) bool {
	t, ok := target.(*RemoteError)
	return ok && t.Code == e.Code && t.Message == ""
}

// ErrInvalidVolumeName is returned for a volume name that is not allowed.
var ErrInvalidVolumeName = errors.New("invalid volume name")

var volumeNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidateVolumeName checks a volume name: 1 to 128 characters of letters,
// digits, '.', '_' and '-', starting with a letter or digit. Names become
// file names in the receiver's state directory, so nothing else is allowed.
func ValidateVolumeName(name string) error {
	if !volumeNameRE.MatchString(name) || name == "." || name == ".." {
		return fmt.Errorf("%w %q: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit", ErrInvalidVolumeName, name)
	}
	return nil
}
