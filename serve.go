package main

// willi serve: a small inetd. It accepts on one address, or on the listening
// socket systemd passes (willi-serve.socket, Accept=no), and starts one willi
// child per connection, handed the connection exactly as inetd would (the
// socket as standard input and output), so every session keeps its own
// process and reads config and mappings fresh. What a long-running parent
// adds over per-connection units: the sandbox is set up once, limits per
// source and in total answer 421 instead of a silent close, and new sessions
// get a shorter command timeout under load (serve_admit.go).

import (
	"context"
	"errors"
	"flag"
	"fmt"
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

	"github.com/coreos/go-systemd/v22/activation"
)

// Defaults of willi serve, documented in the README.
const (
	serveDefaultMaxConn       = 200
	serveDefaultMaxPerSource  = 20
	serveDefaultGrace         = 30 * time.Second
	serveDefaultStressTimeout = 10 * time.Second // Postfix: smtpd_timeout = ${stress?{10}:{300}}s

	// serveKillAfter is how long children get after the SIGTERM that ends
	// the grace period before they are killed.
	serveKillAfter = 10 * time.Second
	// serveRefuseTimeout bounds writing the 421 to a refused client.
	serveRefuseTimeout = 5 * time.Second
)

// serveOptions are the flags of willi serve.
type serveOptions struct {
	listen        string
	config        string
	user          string
	maxConn       int
	maxPerSource  int
	stressAt      int
	stressTimeout time.Duration
	grace         time.Duration
}

const serveUsage = "usage: willi serve [-listen ADDR] [-config FILE] [-user NAME] [-max-conn N] [-max-per-source N] [-stress-at N] [-stress-timeout DURATION] [-grace DURATION]"

func runServe(args []string) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	var o serveOptions
	fs.StringVar(&o.listen, "listen", "", "address to accept SMTP connections on, e.g. `ADDR` 127.0.0.1:2525 or [::]:25 (required unless systemd passes a listening socket)")
	fs.StringVar(&o.config, "config", defaultConfigFile, "config `FILE` handed to every child")
	fs.StringVar(&o.user, "user", "", "run every session as this `NAME` (required when started as root)")
	fs.IntVar(&o.maxConn, "max-conn", serveDefaultMaxConn, "most concurrent connections; more are answered 421 4.3.2 and closed")
	fs.IntVar(&o.maxPerSource, "max-per-source", serveDefaultMaxPerSource, "most concurrent connections from one IPv4 address or IPv6 /64; more are answered 421 4.7.0")
	fs.IntVar(&o.stressAt, "stress-at", 0, "from this many concurrent connections on, new sessions get -stress-timeout until MAIL FROM (default: 3/4 of -max-conn)")
	fs.DurationVar(&o.stressTimeout, "stress-timeout", serveDefaultStressTimeout, "command timeout of sessions started under stress, until MAIL FROM")
	fs.DurationVar(&o.grace, "grace", serveDefaultGrace, "on SIGTERM/SIGINT, how long sessions may run on before their children get SIGTERM")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), serveUsage)
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
	activated := os.Getenv("LISTEN_FDS") != ""
	_, reloaded := os.LookupEnv(serveFDEnv)
	if o.listen == "" && !activated && !reloaded {
		fmt.Fprintln(os.Stderr, "willi serve: -listen is required (or a listening socket passed by systemd)")
		fs.Usage()
		return 2
	}
	if o.maxConn < 1 || o.maxPerSource < 1 || o.stressAt < 0 || o.grace < 0 || o.stressTimeout <= 0 {
		fmt.Fprintln(os.Stderr, "willi serve: -max-conn, -max-per-source and -stress-at must be at least 1, -grace not negative, -stress-timeout positive")
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "serve")
	// At once: a SIGHUP's default action would end willi serve, and a
	// reload may follow a reload's new start closely.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if fit := sessionsWithinTasks(); fit > 0 && o.maxConn > fit {
		log.Warn("the task limit (TasksMax=) holds fewer sessions than -max-conn: taking no more than it holds",
			"max_conn_asked", o.maxConn, "max_conn", fit, "tasks_per_session", serveTasksPerSession)
		o.maxConn = fit
	}
	if o.stressAt == 0 {
		o.stressAt = max(1, o.maxConn*3/4)
	}

	// The children get an absolute path: the config is read afresh by each
	// one, and a broken config is better reported now than per connection.
	cfgPath, err := filepath.Abs(o.config)
	if err != nil {
		log.Error("config path", "config", o.config, "err", err)
		return 1
	}
	o.config = cfgPath
	cfg, err := loadConfig(o.config)
	if err != nil {
		log.Error("config is not usable; fix it (see willi check) and start again", "config", o.config, "err", strings.ReplaceAll(err.Error(), "\n", "; "))
		return 1
	}
	cred, err := sessionCredential(o.user, os.Geteuid())
	if err != nil {
		log.Error("not starting: "+err.Error(), "user", o.user)
		return 2
	}

	exe, err := os.Executable()
	if err != nil {
		log.Error("cannot find own executable", "err", err)
		return 1
	}
	// After a reload: the socket and the sessions of the program before.
	ln, inherited, err := takeOver()
	if err != nil {
		log.Error("reload: cannot take over", "err", err)
		return 1
	}
	if ln == nil {
		if ln, err = serveListener(o.listen, activated); err != nil {
			log.Error("listen", "listen", o.listen, "err", err)
			return 1
		}
	}
	s := &server{opts: o, exe: exe, log: log, hostname: cfg.Hostname, cred: cred,
		perSource: map[string]int{}, children: map[int]*child{}}
	for pid, ch := range inherited {
		s.children[pid] = ch
		s.total++
		s.perSource[ch.key]++
		s.wg.Add(1)
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, syscall.SIGCHLD)
	defer signal.Stop(sigchld)
	select {
	case sigchld <- syscall.SIGCHLD: // sessions that ended during a reload
	default: // one is pending already
	}
	go s.reapChildren(sigchld)

	log.Info("listening", "listen", ln.Addr().String(), "systemd_socket", o.listen == "", "config", o.config,
		"user", cred.name, "max_conn", o.maxConn, "max_per_source", o.maxPerSource,
		"stress_at", o.stressAt, "stress_timeout", o.stressTimeout.String(), "grace", o.grace.String(),
		"pid", os.Getpid(), "version", version, "sessions_taken_over", len(inherited))
	acceptDone := make(chan error, 1)
	go func() { acceptDone <- s.acceptLoop(ln) }()

	status := 0
serving:
	for {
		select {
		case sig := <-sigs:
			log.Info("stopping: no new connections", "signal", sig.String(), "sessions", s.active())
			break serving
		case err := <-acceptDone:
			log.Error("accept failed; stopping", "err", err)
			status = 1
			break serving
		case <-hup:
			next, stopped := s.reload(ln, acceptDone)
			if !stopped {
				continue
			}
			if ln = next; ln == nil {
				log.Error("reload: the listening socket is lost; stopping")
				status = 1
				break serving
			}
			go func() { acceptDone <- s.acceptLoop(ln) }()
		}
	}
	// Under systemd this closes only our copy: the socket unit keeps
	// listening and the kernel queues new connections for the next serve.
	if ln != nil {
		ln.Close()
	}
	if status == 0 {
		<-acceptDone
	}
	s.drain(sigs)
	log.Info("stopped")
	return status
}

// serveListener listens on addr, or takes the one listening socket systemd
// passed (willi-serve.socket) when addr is empty.
func serveListener(addr string, activated bool) (net.Listener, error) {
	if addr != "" {
		return net.Listen("tcp", addr)
	}
	if !activated {
		return nil, errors.New("no address and no socket from systemd")
	}
	lns, err := activation.Listeners()
	if err != nil {
		return nil, err
	}
	var got []net.Listener
	for _, l := range lns {
		if l != nil {
			got = append(got, l)
		}
	}
	if len(got) != 1 {
		for _, l := range got {
			l.Close()
		}
		return nil, fmt.Errorf("systemd passed %d listening stream sockets, want 1 (Accept=no, one ListenStream=)", len(got))
	}
	return got[0], nil
}

// server holds the live children and the per-source counts.
type server struct {
	opts     serveOptions
	exe      string
	log      *slog.Logger
	hostname string // in the 421 replies, read from the config at start
	cred     sessionUser

	mu        sync.Mutex
	total     int
	perSource map[string]int
	children  map[int]*child // by PID, until reaped
	wg        sync.WaitGroup // one for each child not yet reaped
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

// handle admits or refuses one connection and starts its child.
func (s *server) handle(c *net.TCPConn) {
	ip, port := serveSource(c.RemoteAddr())
	remote := net.JoinHostPort(ip, strconv.Itoa(port))
	key := sourceKey(ip)

	refusal, stressed := s.admit(key)
	if refusal != nil {
		s.log.Warn("refused", "remote", remote, "source", key, "reply", refusal.code+" "+refusal.text)
		go serveRefuse(c, s.hostname, *refusal)
		return
	}

	// The reaper looks a child up as soon as it exits: it is entered
	// before the reaper can see it.
	s.mu.Lock()
	pid, err := s.start(c, ip, port, stressed)
	if err == nil {
		s.children[pid] = &child{pid: pid, key: key, remote: remote, start: time.Now()}
		s.wg.Add(1)
	}
	s.mu.Unlock()
	if err != nil {
		s.release(key)
		s.log.Error("cannot start child", "remote", remote, "err", err)
		go serveRefuse(c, s.hostname, refuseUnavailable)
		return
	}
	s.log.Debug("child started", "pid", pid, "remote", remote, "stress", stressed)
}

// start hands the connection to a new child as standard input and output.
// Our copies of the socket are closed once the child has its own; without
// a child the connection stays open, for the caller's refusal.
func (s *server) start(c *net.TCPConn, ip string, port int, stressed bool) (pid int, err error) {
	f, err := c.File() // a blocking duplicate, as inetd hands it over
	if err != nil {
		return 0, err
	}
	defer f.Close()

	cmd := exec.Command(s.exe, "-config", s.opts.config)
	cmd.Stdin = f
	cmd.Stdout = f
	cmd.Stderr = os.Stderr
	cmd.Env = serveChildEnv(os.Environ(), ip, port)
	if stressed {
		cmd.Env = append(cmd.Env, stressEnv+"="+s.opts.stressTimeout.String())
	}
	// Own process group: a ^C in the terminal reaches willi serve only,
	// which then lets the sessions finish.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: s.cred.credential}
	if err := cmd.Start(); err != nil {
		// The duplicate shares the socket's open file description, whose
		// non-blocking mode it took away for the child: without it our
		// refusal would block a whole OS thread on the client.
		f.Close()
		if rc, rerr := c.SyscallConn(); rerr == nil {
			rc.Control(func(fd uintptr) { syscall.SetNonblock(int(fd), true) })
		}
		return 0, err
	}
	c.Close()
	// The reaper collects the child by its PID (serve_reap.go).
	pid = cmd.Process.Pid
	cmd.Process.Release()
	return pid, nil
}

// serveChildEnv is our environment without socket-activation variables
// (they would point the child at the wrong fd) or a stress mark of our own,
// plus the client's address, named as systemd names it, and GOMAXPROCS=1
// unless set (one session needs one CPU; as willi@.service sets it).
func serveChildEnv(env []string, ip string, port int) []string {
	out := make([]string, 0, len(env)+4)
	procs := false
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "REMOTE_ADDR", "REMOTE_PORT", stressEnv:
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
	<-done // SIGKILL cannot be ignored: the reaper sees them all go
}

func (s *server) signalAll(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Safe by PID: a child is reaped, and its PID freed, only under s.mu.
	for pid := range s.children {
		syscall.Kill(pid, sig)
	}
}
