package main

import (
	"log"
	"sync"
)

// Cleanup is a stack of undo steps run in reverse order, each at most once:
// Run may be called any number of times (after a scenario, on an error, on
// Ctrl-C) and does only what is still to do.
type Cleanup struct {
	mu    sync.Mutex
	steps []*step
}

type step struct {
	name string
	fn   func() error
	done bool
}

// Add registers fn and returns a function that runs it now (once) and
// removes it from the stack, for undoing in the normal course of a run.
func (c *Cleanup) Add(name string, fn func() error) func() error {
	s := &step{name: name, fn: fn}
	c.mu.Lock()
	c.steps = append(c.steps, s)
	c.mu.Unlock()
	return func() error { return c.runStep(s) }
}

func (c *Cleanup) runStep(s *step) error {
	c.mu.Lock()
	if s.done {
		c.mu.Unlock()
		return nil
	}
	s.done = true
	c.mu.Unlock()
	return s.fn()
}

// Run undoes every step not yet undone, newest first, logging failures
// and going on.
func (c *Cleanup) Run() {
	for {
		c.mu.Lock()
		var s *step
		for i := len(c.steps) - 1; i >= 0; i-- {
			if !c.steps[i].done {
				s = c.steps[i]
				break
			}
		}
		c.mu.Unlock()
		if s == nil {
			return
		}
		if err := c.runStep(s); err != nil {
			log.Printf("cleanup: %s: %v", s.name, err)
		}
	}
}
