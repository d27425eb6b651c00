package errkind

import "fmt"

// Error is an error of kind Kind; Err carries the message and the cause.
type Error struct {
	Kind error
	Err  error
}

func (e *Error) Error() string   { return e.Err.Error() }
func (e *Error) Unwrap() []error { return []error{e.Kind, e.Err} }

// Errorf returns an error that errors.Is kind, with the formatted message
// (%w wraps a cause as with fmt.Errorf).
func Errorf(kind error, format string, a ...any) error {
	return &Error{Kind: kind, Err: fmt.Errorf(format, a...)}
}
