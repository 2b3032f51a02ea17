package main

import (
	"errors"
	"os"
	"syscall"
	"time"
)

// child is one session willi serve started.
type child struct {
	pid    int
	key    string // its source, for the per-source count
	remote string
	start  time.Time
}

// reapChildren collects exited children, on each SIGCHLD, in one
// goroutine. A goroutine per child blocked in wait would hold an OS thread
// each: 200 sessions would cost willi serve 200 threads of the service's
// TasksMax=, and when the Go runtime cannot start a thread it aborts the
// whole server with every session in it.
func (s *server) reapChildren(sigchld <-chan os.Signal) {
	for range sigchld {
		for s.reapOne() {
		}
	}
}

// reapOne collects one exited child, if there is one.
func (s *server) reapOne() bool {
	var ws syscall.WaitStatus
	s.mu.Lock()
	pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
	ch := s.children[pid]
	delete(s.children, pid)
	s.mu.Unlock()
	switch {
	case errors.Is(err, syscall.EINTR):
		return true
	case err != nil || pid <= 0:
		return false // none left (ECHILD), or none exited yet
	case ch == nil:
		return true // not a session: willi serve starts no other process
	}
	s.release(ch.key)
	attrs := []any{"pid", pid, "remote", ch.remote, "duration", time.Since(ch.start).Round(time.Millisecond).String()}
	switch {
	case ws.Signaled():
		s.log.Warn("child killed", append(attrs, "signal", ws.Signal().String())...)
	case ws.ExitStatus() != 0:
		s.log.Warn("child exited", append(attrs, "status", ws.ExitStatus())...)
	default:
		s.log.Info("child exited", append(attrs, "status", 0)...)
	}
	s.wg.Done()
	return true
}
