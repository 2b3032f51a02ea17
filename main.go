// Command willi is an SMTP routing proxy: one process per client
// connection, each recipient routed by an ordered chain of mappings to an
// upstream server, the session relayed live without a queue.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// version is stamped by `make build` / `make release` from git describe.
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) > 0 {
		switch args[0] {
		case "version":
			fmt.Println("willi", version)
			return 0
		case "lookup":
			return runLookup(args[1:], os.Stdout)
		case "check":
			return runCheck(args[1:], os.Stdout)
		case "serve":
			return runServe(args[1:])
		case "probe":
			return runProbe(args[1:], os.Stdout)
		}
	}
	fs := flag.NewFlagSet("willi", flag.ContinueOnError)
	cfgPath := fs.String("config", defaultConfigFile, "config file")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: willi [-config FILE] | lookup | check | probe | version | serve")
		return 2
	}
	return serveConnection(*cfgPath)
}

// serveConnection serves the one connection this process was started for.
// Exit status 0 whenever the session ran, 1 when it could not be served.
func serveConnection(cfgPath string) int {
	log := newLogger()
	conn, err := clientConn()
	if err != nil {
		log.Error("no client connection", "err", err)
		return 1
	}
	log = log.With("session", newSessionID())
	cfg, err := loadConfig(cfgPath)
	if err != nil {
		log.Error("bad config, refusing the connection", "err", err)
		conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(conn, string(replyConfig.appendTo(nil)))
		conn.Close()
		return 1
	}
	setLogLevel(cfg.LogLevel)

	s := newSession(cfg, conn, log)
	s.clientIP, s.clientPort = clientAddress(conn)
	s.localAddr = localAddress(conn)
	if cfg.ProxyProtocol.trusts(s.clientIP) {
		src, err := readProxyHeader(conn, s.r)
		if err != nil {
			log.Warn("trusted peer sent no valid PROXY header, closing", "peer", s.clientString(), "err", err)
			conn.Close()
			return 0
		}
		if src != nil {
			log.Debug("PROXY header", "peer", s.clientString(), "client", src.String())
			s.clientIP, s.clientPort = unmap(src.IP), src.Port
		}
	} else if cfg.ProxyProtocol != nil {
		// A peer that is not trusted must not send a PROXY header, and one
		// that does is refused before the banner (earlyTalker). A load
		// balancer sends its header at once: give it a moment to arrive.
		conn.SetReadDeadline(time.Now().Add(untrustedHeaderWait))
		s.r.Peek(1)
		conn.SetReadDeadline(time.Time{})
	}
	log.Debug("connect", "client", s.clientString())

	// SIGTERM (systemd stop, RuntimeMaxSec): tell the client, leave the
	// upstream without an end of data, exit.
	// Signals are taken over once the banner is out: before that, a
	// SIGTERM ends the process with nothing in progress to close.
	// NotifyContext and AfterFunc, not a goroutine of our own waiting on a
	// channel: the function name of every goroutine started is looked up
	// in the binary's tables, and one of package main costs the process a
	// page-fault window (64 KiB of RSS) that os/signal's own has paid.
	s.greeted = func() {
		ctx, _ := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		signal.Ignore(syscall.SIGPIPE)
		context.AfterFunc(ctx, s.terminate)
	}
	s.serve()
	return 0
}

// runLookup implements `willi lookup [-config FILE] ADDRESS...`.
func runLookup(args []string, out io.Writer) int {
	fs := flag.NewFlagSet("lookup", flag.ContinueOnError)
	cfgPath := fs.String("config", defaultConfigFile, "config file")
	if err := fs.Parse(args); err != nil || fs.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: willi lookup [-config FILE] ADDRESS...")
		return 2
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ch, err := newChain(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer ch.Close()
	status := 0
	for _, a := range fs.Args() {
		addr, _, r := canonicalAddress(trimBrackets(a), true)
		if r != nil {
			fmt.Fprintf(out, "%s: invalid address: %s\n", a, r.Text[0])
			status = 2
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
		route, err := ch.Route(ctx, addr, cfg.RecipientDelimiter)
		cancel()
		switch {
		case err == nil:
			fmt.Fprintf(out, "%s -> %s (mapping %s, key %s)\n", addr, route.ID(), route.Mapping, route.Key)
		case err == errNoRoute:
			fmt.Fprintf(out, "%s: no route\n", addr)
			if status == 0 {
				status = 1
			}
		default:
			fmt.Fprintf(out, "%s: lookup error: %v\n", addr, err)
			status = 2
		}
	}
	return status
}

func trimBrackets(a string) string {
	if len(a) >= 2 && a[0] == '<' && a[len(a)-1] == '>' {
		return a[1 : len(a)-1]
	}
	return a
}

// checkTLSFiles loads the [tls] certificate and every [[upstream]]'s TLS
// files, prints each problem and reports whether there was none.
func checkTLSFiles(cfg *Config, out io.Writer) bool {
	ok := true
	if cfg.TLS != nil && cfg.TLS.CertFile != "" && cfg.TLS.KeyFile != "" {
		if _, err := serverTLSConfig(cfg.TLS); err != nil {
			fmt.Fprintf(out, "%s: [tls]: %v\n", cfg.path, err)
			ok = false
		}
	}
	for i, uc := range cfg.Upstreams {
		srv, err := parseServers(uc.Server)
		if uc.StartTLS == tlsNever || err != nil || len(srv) != 1 {
			continue
		}
		if _, err := upstreamTLSConfig(uc, srv[0].Host); err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				fmt.Fprintf(out, "%s: [[upstream]] #%d (%s): %s\n", cfg.path, i+1, uc.Server, line)
			}
			ok = false
		}
	}
	return ok
}

// runCheck implements `willi check [-config FILE]`: the config, the TLS
// key pair and every mapping opened in full.
func runCheck(args []string, out io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	cfgPath := fs.String("config", defaultConfigFile, "config file")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: willi check [-config FILE]")
		return 1
	}
	cfg, err := loadConfigPartial(*cfgPath)
	if err != nil {
		fmt.Fprintln(out, err)
		if cfg != nil {
			// The files the config names are worth reading all the
			// same; the mappings are not opened with a broken config.
			checkTLSFiles(cfg, out)
		}
		return 1
	}
	status := 0
	if !checkTLSFiles(cfg, out) {
		status = 1
	}
	for i, mc := range cfg.Mappings {
		where := fmt.Sprintf("%s: [[mapping]] #%d (%s)", cfg.path, i+1, mc.Type)
		m, err := newMapping(mc)
		if err != nil {
			fmt.Fprintf(out, "%s: %v\n", where, err)
			status = 1
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		warnings, err := m.Check(ctx)
		cancel()
		m.Close()
		for _, w := range warnings {
			fmt.Fprintf(out, "%s: warning: %s\n", where, w)
		}
		if err != nil {
			fmt.Fprintf(out, "%s: %v\n", where, err)
			status = 1
		}
	}
	if status == 0 {
		fmt.Fprintf(out, "%s: ok\n", cfg.path)
	}
	return status
}
