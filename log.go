package main

import (
	"fmt"
	"io"
	"log/slog"
	"log/syslog"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
)

// logLevel is set from the config once it is read; until then info.
var logLevel = new(slog.LevelVar)

// newLogger returns the process's logger: key=value lines to standard
// error, unless standard error is the client connection itself (inetd and
// xinetd pass the socket as fds 0, 1 and 2): then to the journal if it is
// there, else to syslog. A log line must never reach the client.
func newLogger() *slog.Logger {
	var w io.Writer = os.Stderr
	if stderrIsClient() {
		w = quietLogWriter()
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: logLevel}))
}

func setLogLevel(name string) {
	var l slog.Level
	if l.UnmarshalText([]byte(name)) == nil {
		logLevel.Set(l)
	}
}

// stderrIsClient reports fd 2 being the same socket as fd 0, or any
// network socket (journald's stream is a unix socket).
func stderrIsClient() bool {
	var e, in syscall.Stat_t
	if syscall.Fstat(2, &e) != nil {
		return false
	}
	if e.Mode&syscall.S_IFMT != syscall.S_IFSOCK {
		return false
	}
	if syscall.Fstat(0, &in) == nil && in.Dev == e.Dev && in.Ino == e.Ino {
		return true
	}
	sa, err := syscall.Getsockname(2)
	if err != nil {
		return false
	}
	switch sa.(type) {
	case *syscall.SockaddrInet4, *syscall.SockaddrInet6:
		return true
	}
	return false
}

// quietLogWriter writes each log line as one journal or syslog message.
func quietLogWriter() io.Writer {
	// Nothing may go to fd 2 any more, not even a Go runtime message.
	if devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0); err == nil {
		syscall.Dup2(int(devnull.Fd()), 2)
		devnull.Close()
	}
	if journal.Enabled() {
		return journalWriter{}
	}
	if w, err := syslog.New(syslog.LOG_MAIL|syslog.LOG_INFO, "willi"); err == nil {
		return w
	}
	return io.Discard
}

type journalWriter struct{}

func (journalWriter) Write(p []byte) (int, error) {
	line := strings.TrimSuffix(string(p), "\n")
	// The first level= is the handler's own (it follows time=); a later
	// one would be client text, such as a HELO.
	_, rest, _ := strings.Cut(line, "level=")
	prio := journal.PriInfo
	switch {
	case strings.HasPrefix(rest, "ERROR"):
		prio = journal.PriErr
	case strings.HasPrefix(rest, "WARN"):
		prio = journal.PriWarning
	case strings.HasPrefix(rest, "DEBUG"):
		prio = journal.PriDebug
	}
	err := journal.Send(line, prio, map[string]string{"SYSLOG_IDENTIFIER": "willi"})
	return len(p), err
}

// newSessionID returns a short id that ties a session's log lines together
// and appears in the banner's log line.
func newSessionID() string {
	return fmt.Sprintf("%x%04x", time.Now().UnixNano()&0xffffffffff, os.Getpid()&0xffff)
}
