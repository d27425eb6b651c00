package main

import (
	"log/slog"
	"sync"

	"github.com/go-logr/logr"
	ctrl "sigs.k8s.io/controller-runtime"
)

var ctrlLoggerOnce sync.Once

// setControllerLogger routes controller-runtime's process-wide logger to l.
// controller-runtime's SetLogger is not safe to call concurrently, and only
// the first call takes effect; commands run in-process (tests) may race.
func setControllerLogger(l *slog.Logger) {
	ctrlLoggerOnce.Do(func() { ctrl.SetLogger(logr.FromSlogHandler(l.Handler())) })
}
