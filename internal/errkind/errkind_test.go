package errkind

import (
	"errors"
	"io"
	"testing"
)

func TestErrorf(t *testing.T) {
	kind := errors.New("busy")
	err := Errorf(kind, "volume %q: %w", "v", io.EOF)
	if !errors.Is(err, kind) || !errors.Is(err, io.EOF) {
		t.Fatalf("errors.Is lost the kind or the cause: %v", err)
	}
	if err.Error() != `volume "v": EOF` {
		t.Fatalf("message %q", err.Error())
	}
}
