// Package atomicfile replaces small state files atomically and durably:
// a temporary file in the same directory is written, fsynced, renamed over
// the destination, and the directory is fsynced, so a crash leaves either
// the old file or the new one, never a torn one.
package atomicfile
