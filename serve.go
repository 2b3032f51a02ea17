package main

// willi serve: a small inetd for hosts without socket activation. It accepts
// on one address and starts one willi child per connection, handed the
// connection exactly as inetd would (the socket as standard input and
// output), so every session keeps its own process and reads config and
// mappings fresh.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Defaults of willi serve, documented in the README.
const (
	serveDefaultMaxConn      = 200
	serveDefaultMaxPerSource = 20
	serveDefaultGrace        = 30 * time.Second

	// serveKillAfter is how long children get after the SIGTERM that ends
	// the grace period before they are killed.
	serveKillAfter = 10 * time.Second
	// serveRefuseTimeout bounds writing the 421 to a refused client.
	serveRefuseTimeout = 5 * time.Second
)

// serveOptions are the flags of willi serve.
type serveOptions struct {
	listen       string
	config       string
	maxConn      int
	maxPerSource int
	grace        time.Duration
}

func runServe(args []string) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	var o serveOptions
	fs.StringVar(&o.listen, "listen", "", "address to accept SMTP connections on, e.g. `ADDR` 127.0.0.1:2525 or [::]:25 (required)")
	fs.StringVar(&o.config, "config", defaultConfigFile, "config `FILE` handed to every child")
	fs.IntVar(&o.maxConn, "max-conn", serveDefaultMaxConn, "most concurrent connections; more are answered 421 and closed")
	fs.IntVar(&o.maxPerSource, "max-per-source", serveDefaultMaxPerSource, "most concurrent connections from one client address")
	fs.DurationVar(&o.grace, "grace", serveDefaultGrace, "on SIGTERM/SIGINT, how long sessions may run on before their children get SIGTERM")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: willi serve -listen ADDR [-config FILE] [-max-conn N] [-max-per-source N] [-grace DURATION]\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "willi serve: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return 2
	}
	if o.listen == "" {
		fmt.Fprintln(os.Stderr, "willi serve: -listen is required")
		fs.Usage()
		return 2
	}
	if o.maxConn < 1 || o.maxPerSource < 1 || o.grace < 0 {
		fmt.Fprintln(os.Stderr, "willi serve: -max-conn and -max-per-source must be at least 1, -grace not negative")
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "serve")

	// The children get an absolute path: the config is read afresh by each
	// one, and a broken config is better reported now than per connection.
	cfg, err := filepath.Abs(o.config)
	if err != nil {
		log.Error("config path", "config", o.config, "err", err)
		return 1
	}
	o.config = cfg
	if _, err := loadConfig(o.config); err != nil {
		log.Error("config is not usable; fix it (see willi check) and start again", "config", o.config, "err", strings.ReplaceAll(err.Error(), "\n", "; "))
		return 1
	}
	exe, err := os.Executable()
	if err != nil {
		log.Error("cannot find own executable", "err", err)
		return 1
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		log.Error("listen", "listen", o.listen, "err", err)
		return 1
	}
	s := &server{opts: o, exe: exe, log: log, perSource: map[string]int{}, children: map[int]*exec.Cmd{}}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	log.Info("listening", "listen", ln.Addr().String(), "config", o.config, "max_conn", o.maxConn, "max_per_source", o.maxPerSource, "grace", o.grace.String(), "pid", os.Getpid())
	acceptDone := make(chan error, 1)
	go func() { acceptDone <- s.acceptLoop(ln) }()

	status := 0
	select {
	case sig := <-sigs:
		log.Info("stopping: no new connections", "signal", sig.String(), "sessions", s.active())
	case err := <-acceptDone:
		log.Error("accept failed; stopping", "err", err)
		status = 1
	}
	ln.Close()
	if status == 0 {
		<-acceptDone
	}
	s.drain(sigs)
	log.Info("stopped")
	return status
}

// server holds the live children and the per-source counts.
type server struct {
	opts serveOptions
	exe  string
	log  *slog.Logger

	mu        sync.Mutex
	total     int
	perSource map[string]int
	children  map[int]*exec.Cmd
	wg        sync.WaitGroup
}

func (s *server) active() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

// acceptLoop runs until the listener is closed (nil) or fails for good.
func (s *server) acceptLoop(ln net.Listener) error {
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporaryAcceptError(err) {
				// Out of file descriptors and the like: wait and retry,
				// as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept", "err", err, "retry_in", backoff.String())
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		s.handle(c.(*net.TCPConn))
	}
}

func isTemporaryAcceptError(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EINTR)
}

// serveSource is the per-source key: the client's IP address (IPv4-mapped
// IPv6 addresses count as their IPv4 address).
func serveSource(a net.Addr) (ip string, port int) {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String(), 0
	}
	if v4 := ta.IP.To4(); v4 != nil {
		return v4.String(), ta.Port
	}
	return ta.IP.String(), ta.Port
}

// handle admits or refuses one connection and starts its child.
func (s *server) handle(c *net.TCPConn) {
	ip, port := serveSource(c.RemoteAddr())
	remote := net.JoinHostPort(ip, strconv.Itoa(port))

	s.mu.Lock()
	reason := ""
	switch {
	case s.total >= s.opts.maxConn:
		reason = "too many connections, try again later"
	case s.perSource[ip] >= s.opts.maxPerSource:
		reason = "too many connections from your address, try again later"
	default:
		s.total++
		s.perSource[ip]++
	}
	s.mu.Unlock()
	if reason != "" {
		s.log.Warn("refused", "remote", remote, "reason", reason)
		go serveRefuse(c, reason)
		return
	}

	cmd, err := s.start(c, ip, port)
	if err != nil {
		s.release(ip)
		s.log.Error("cannot start child", "remote", remote, "err", err)
		go serveRefuse(c, "service temporarily unavailable")
		return
	}
	pid := cmd.Process.Pid
	s.mu.Lock()
	s.children[pid] = cmd
	s.mu.Unlock()
	s.log.Debug("child started", "pid", pid, "remote", remote)

	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		start := time.Now()
		err := cmd.Wait()
		s.mu.Lock()
		delete(s.children, pid)
		s.mu.Unlock()
		s.release(ip)
		attrs := []any{"pid", pid, "remote", remote, "duration", time.Since(start).Round(time.Millisecond).String()}
		var ee *exec.ExitError
		switch {
		case err == nil:
			s.log.Info("child exited", append(attrs, "status", 0)...)
		case errors.As(err, &ee):
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				s.log.Warn("child killed", append(attrs, "signal", ws.Signal().String())...)
			} else {
				s.log.Warn("child exited", append(attrs, "status", ee.ExitCode())...)
			}
		default:
			s.log.Error("child wait", append(attrs, "err", err)...)
		}
	}()
}

// start hands the connection to a new child as standard input and output.
// Our copies of the socket are closed once the child has its own.
func (s *server) start(c *net.TCPConn, ip string, port int) (*exec.Cmd, error) {
	defer c.Close()
	f, err := c.File() // a blocking duplicate, as inetd hands it over
	if err != nil {
		return nil, err
	}
	defer f.Close()

	cmd := exec.Command(s.exe, "-config", s.opts.config)
	cmd.Stdin = f
	cmd.Stdout = f
	cmd.Stderr = os.Stderr
	cmd.Env = serveChildEnv(os.Environ(), ip, port)
	// Own process group: a ^C in the terminal reaches willi serve only,
	// which then lets the sessions finish.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return cmd, nil
}

// serveChildEnv is our environment without socket-activation variables
// (they would point the child at the wrong fd) plus the client's address,
// named as systemd names it, and GOMAXPROCS=1 unless set (one session needs
// one CPU; as willi@.service sets it).
func serveChildEnv(env []string, ip string, port int) []string {
	out := make([]string, 0, len(env)+3)
	procs := false
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "REMOTE_ADDR", "REMOTE_PORT":
			continue
		case "GOMAXPROCS":
			procs = true
		}
		out = append(out, kv)
	}
	if !procs {
		out = append(out, "GOMAXPROCS=1")
	}
	return append(out, "REMOTE_ADDR="+ip, "REMOTE_PORT="+strconv.Itoa(port))
}

func (s *server) release(ip string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total--
	if s.perSource[ip]--; s.perSource[ip] <= 0 {
		delete(s.perSource, ip)
	}
}

// serveRefuse answers 421 and closes without reading what the client sent.
func serveRefuse(c net.Conn, reason string) {
	defer c.Close()
	c.SetWriteDeadline(time.Now().Add(serveRefuseTimeout))
	io.WriteString(c, "421 4.7.0 "+reason+"\r\n")
	if tc, ok := c.(*net.TCPConn); ok {
		// Let the reply leave before the close; drop anything unread
		// without a reset racing it.
		tc.CloseWrite()
		c.SetReadDeadline(time.Now().Add(time.Second))
		io.Copy(io.Discard, io.LimitReader(c, 64<<10))
	}
}

// drain waits for the children: up to the grace period, then SIGTERM, then
// after serveKillAfter SIGKILL. A second signal ends the grace at once.
func (s *server) drain(sigs <-chan os.Signal) {
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()

	ctx, cancel := context.WithTimeout(context.Background(), s.opts.grace)
	defer cancel()
	select {
	case <-done:
		return
	case <-ctx.Done():
		s.log.Warn("grace period over; terminating sessions", "sessions", s.active())
	case sig := <-sigs:
		s.log.Warn("second signal; terminating sessions", "signal", sig.String(), "sessions", s.active())
	}
	s.signalAll(syscall.SIGTERM)
	select {
	case <-done:
		return
	case <-time.After(serveKillAfter):
		s.log.Error("sessions did not end after SIGTERM; killing them", "sessions", s.active())
	}
	s.signalAll(syscall.SIGKILL)
	<-done // SIGKILL cannot be ignored: Wait returns
}

func (s *server) signalAll(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, cmd := range s.children {
		cmd.Process.Signal(sig)
	}
}
