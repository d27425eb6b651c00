// Package toolcache locates the tools the Makefile builds or installs into
// the voldelta cache (scripts/ensure-*.sh): $CACHE as the Makefile exports
// it, else ${XDG_CACHE_HOME:-$HOME/.cache}/voldelta.
package toolcache

import (
	"os"
	"path/filepath"
)

// Dir returns the voldelta cache directory.
func Dir() string {
	if cache := os.Getenv("CACHE"); cache != "" {
		return cache
	}
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, _ := os.UserHomeDir()
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "voldelta")
}

// Bin returns the path of tool name: the environment variable env if set,
// else the cache's bin/name.
func Bin(env, name string) string {
	if p := os.Getenv(env); env != "" && p != "" {
		return p
	}
	return filepath.Join(Dir(), "bin", name)
}
