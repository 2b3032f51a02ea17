package main

// willi serve's reload (SIGHUP, systemctl reload): it re-executes the
// program file now at its path, as the same process, so that an upgraded
// willi serve takes over without a restart. A restart would have to wait
// for every session to finish while new clients wait in the backlog; a
// re-exec keeps the listening socket open throughout and hands the new
// program the sessions in progress, which it reaps and counts as its own.

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Environment by which willi serve hands itself over to its next program.
const (
	serveFDEnv       = "WILLI_SERVE_FD"       // the listening socket's descriptor
	serveSessionsEnv = "WILLI_SERVE_SESSIONS" // the children (formatSessions)
)

// reload re-executes willi serve. When the config does not load, or the
// socket cannot be handed on, it logs why and changes nothing (stopped is
// false: the accept loop on ln goes on). Otherwise it stops accepting on
// ln; it returns only if the exec failed, with the listener to serve on
// (nil if the socket is lost), for the caller to start accepting again.
func (s *server) reload(ln net.Listener, acceptDone <-chan error) (next net.Listener, stopped bool) {
	// A config that does not load would stop the new program at once.
	if _, err := loadConfig(s.opts.config); err != nil {
		s.log.Error("reload failed; serving on", "err", "config is not usable: "+strings.ReplaceAll(err.Error(), "\n", "; "))
		return ln, false
	}
	fd, err := inheritableListenerFD(ln)
	if err != nil {
		s.log.Error("reload failed; serving on", "err", "cannot hand on the listening socket: "+err.Error())
		return ln, false
	}
	s.log.Info("reloading: re-executing", "program", s.exe, "sessions", s.active())
	// Connections arriving from now on wait in the socket's backlog for
	// the next program.
	ln.Close()
	<-acceptDone
	err = s.reexec(fd)
	s.log.Error("reload failed; serving on", "err", err)
	return resumeListener(fd), true
}

// reexec replaces this process with the program at s.exe, handing it the
// listening socket fd and the children; it returns only if that failed.
func (s *server) reexec(fd int) error {
	env := make([]string, 0, len(os.Environ())+2)
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k != serveFDEnv && k != serveSessionsEnv && !strings.HasPrefix(k, "LISTEN_") {
			env = append(env, kv)
		}
	}
	// The children stay ours across the exec: none is reaped meanwhile.
	s.mu.Lock()
	defer s.mu.Unlock()
	env = append(env, serveFDEnv+"="+strconv.Itoa(fd), serveSessionsEnv+"="+formatSessions(s.children))
	return syscall.Exec(s.exe, os.Args, env)
}

// inheritableListenerFD returns a duplicate of ln's socket that survives
// exec (no close-on-exec), leaving ln's own descriptor and mode alone.
func inheritableListenerFD(ln net.Listener) (int, error) {
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		return -1, errors.New("not a TCP listener")
	}
	rc, err := tl.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if cerr := rc.Control(func(raw uintptr) { fd, err = syscall.Dup(int(raw)) }); cerr != nil {
		return -1, cerr
	}
	return fd, err
}

// resumeListener serves on a handed-over socket descriptor again.
func resumeListener(fd int) net.Listener {
	f := os.NewFile(uintptr(fd), "listener")
	defer f.Close()
	ln, err := net.FileListener(f)
	if err != nil {
		return nil
	}
	return ln
}

// takeOver is the new program's side: the socket and the sessions its
// predecessor handed over, if it did. The environment is cleared of both.
func takeOver() (ln net.Listener, children map[int]*child, err error) {
	v, ok := os.LookupEnv(serveFDEnv)
	if !ok {
		return nil, nil, nil
	}
	sessions := os.Getenv(serveSessionsEnv)
	os.Unsetenv(serveFDEnv)
	os.Unsetenv(serveSessionsEnv)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, nil, fmt.Errorf("%s=%q: not a descriptor", serveFDEnv, v)
	}
	syscall.CloseOnExec(fd) // not for the sessions this program starts
	if ln = resumeListener(fd); ln == nil {
		return nil, nil, fmt.Errorf("%s=%d: not a listening socket", serveFDEnv, fd)
	}
	return ln, parseSessions(sessions), nil
}

// formatSessions writes the children for the next program:
// pid/start-ns/remote/source, comma-separated (a source may hold a "/").
func formatSessions(children map[int]*child) string {
	var out []string
	for _, ch := range children {
		out = append(out, fmt.Sprintf("%d/%d/%s/%s", ch.pid, ch.start.UnixNano(), ch.remote, ch.key))
	}
	return strings.Join(out, ",")
}

// parseSessions reads what formatSessions wrote.
func parseSessions(v string) map[int]*child {
	children := map[int]*child{}
	for _, entry := range strings.Split(v, ",") {
		f := strings.SplitN(entry, "/", 4)
		if len(f) != 4 {
			continue
		}
		pid, perr := strconv.Atoi(f[0])
		ns, nerr := strconv.ParseInt(f[1], 10, 64)
		if perr != nil || nerr != nil || pid <= 0 {
			continue
		}
		children[pid] = &child{pid: pid, key: f[3], remote: f[2], start: time.Unix(0, ns)}
	}
	return children
}
