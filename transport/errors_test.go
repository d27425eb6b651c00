package transport

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestValidateVolumeName(t *testing.T) {
	cases := []struct {
		name string
		ok   bool
	}{
		{"pvc-1234", true},
		{"db.data_01", true},
		{"a", true},
		{"0", true},
		{"A.b-C_d", true},
		{"pvc-3f1c9a2e-7d7b-4f7e-9a57-1c2b3d4e5f60", true},
		{strings.Repeat("x", 128), true},
		{"", false},
		{"../x", false},
		{"a/b", false},
		{".", false},
		{"..", false},
		{".hidden", false},
		{"-x", false},
		{"_x", false},
		{strings.Repeat("x", 129), false},
		{"has space", false},
		{"tab\there", false},
		{"new\nline", false},
		{"trailing\n", false},
		{"back\\slash", false},
		{"nul\x00", false},
		{"colon:x", false},
		{"pvc-é", false},
	}
	for _, tc := range cases {
		err := ValidateVolumeName(tc.name)
		if tc.ok && err != nil {
			t.Errorf("%q rejected: %v", tc.name, err)
		}
		if !tc.ok && !errors.Is(err, ErrInvalidVolumeName) {
			t.Errorf("%q: got %v, want ErrInvalidVolumeName", tc.name, err)
		}
	}
}

func TestRemoteErrorIs(t *testing.T) {
	var err error = fmt.Errorf("sync pvc-1: %w", &RemoteError{Code: ErrCodeBusy, Message: "agent-2 holds the lock"})
	if !errors.Is(err, &RemoteError{Code: ErrCodeBusy}) {
		t.Errorf("errors.Is does not match the code")
	}
	if errors.Is(err, &RemoteError{Code: ErrCodeShutdown}) {
		t.Errorf("errors.Is matches another code")
	}
	if errors.Is(err, &RemoteError{Code: ErrCodeBusy, Message: "something else"}) {
		t.Errorf("a target with a message matches any message")
	}
	if errors.Is(err, ErrProtocol) {
		t.Errorf("a remote error is not a local protocol error")
	}
	var re *RemoteError
	if !errors.As(err, &re) || re.Code != ErrCodeBusy || re.Message != "agent-2 holds the lock" {
		t.Fatalf("errors.As: %#v", re)
	}
	if s := err.Error(); !strings.Contains(s, "busy") || !strings.Contains(s, "agent-2 holds the lock") {
		t.Errorf("message %q does not name the code and the reason", s)
	}
}

func TestErrorCodes(t *testing.T) {
	cases := []struct {
		code      ErrorCode
		value     uint16
		name      string
		retryable bool
	}{
		{ErrCodeProtocol, 1, "protocol", false},
		{ErrCodeVersion, 2, "version", false},
		{ErrCodeUnknown, 3, "unknown volume", false},
		{ErrCodeBusy, 4, "busy", true},
		{ErrCodeTooSmall, 5, "target too small", false},
		{ErrCodeParams, 6, "chunk parameters", false},
		{ErrCodeApply, 7, "apply failed", true},
		{ErrCodeVerify, 8, "verification failed", true},
		{ErrCodeForbidden, 9, "forbidden", false},
		{ErrCodeSourceChange, 10, "source changed", true},
		{ErrCodeShutdown, 11, "shutting down", true},
		{ErrCodeCanceled, 12, "canceled", false},
		{0, 0, "error 0", false},
		{ErrCodeTargetFull, 13, "target full", false},
		{ErrCodeTargetState, 14, "target state", false},
		{ErrCodePromoted, 15, "promoted", false},
		{ErrCodeGroup, 16, "group refused", false},
		{17, 17, "error 17", false},
		{65535, 65535, "error 65535", false},
	}
	for _, tc := range cases {
		if uint16(tc.code) != tc.value {
			t.Errorf("%v has value %d, spec.md says %d", tc.code, uint16(tc.code), tc.value)
		}
		if s := tc.code.String(); s != tc.name {
			t.Errorf("code %d prints %q, want %q", tc.value, s, tc.name)
		}
		if r := tc.code.Retryable(); r != tc.retryable {
			t.Errorf("%v: Retryable() = %v, want %v", tc.code, r, tc.retryable)
		}
	}
}
