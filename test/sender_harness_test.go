package test

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// Real sending MTAs for the tests: a private Postfix instance and Exim 4
// from Debian's packages (extracted by test/deps.sh). Both relay every
// message to one SMTP server (willi) unless a route says otherwise, deliver
// mail for their own domain (bounces) into local maildirs, and let a test
// submit messages, read their logs and queues.

// senderOpts configures a sending MTA.
type senderOpts struct {
	Relay  string            // host:port every message goes to (willi)
	Routes map[string]string // recipient domain -> host:port, overriding Relay
	TLS    bool              // opportunistic STARTTLS towards the relay (certificates not verified)
}

// senderMTA is what the tests do with either sender.
type senderMTA interface {
	// Name is "postfix" or "exim".
	Name() string
	// Submit hands one message (LF line ends) to the MTA, which delivers it
	// at once (Exim in the submitting process, Postfix from its queue).
	Submit(t testing.TB, from string, rcpts []string, msg []byte)
	// Log is the MTA's log so far.
	Log() string
	// WaitLog waits until the log matches every substring on one line and
	// returns that line.
	WaitLog(t testing.TB, timeout time.Duration, substrs ...string) string
	// WaitSent waits until the MTA logged rcpt as delivered with a 250 and
	// returns that log line.
	WaitSent(t testing.TB, rcpt string, timeout time.Duration) string
	// Queue lists the messages still queued (postqueue -p, exim -bp); ""
	// when the queue is empty.
	Queue(t testing.TB) string
	// Flush makes the MTA retry every queued message now.
	Flush(t testing.TB)
	// Mailbox returns the messages delivered locally to user@<sender domain>
	// (bounces), oldest first.
	Mailbox(user string) []string
	// Domain is the sender's own domain: mail from user@Domain.
	Domain() string
}

// waitLogLine polls log() until one line holds every substring.
func waitLogLine(t testing.TB, what string, log func() string, timeout time.Duration, substrs ...string) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		l := log()
		for _, line := range strings.Split(l, "\n") {
			all := true
			for _, s := range substrs {
				if !strings.Contains(line, s) {
					all = false
					break
				}
			}
			if all {
				return line
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s log has no line with %q within %v; log:\n%s", what, substrs, timeout, l)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// readMaildir returns the messages in dir/new, oldest first.
func readMaildir(dir string) []string {
	ents, _ := os.ReadDir(filepath.Join(dir, "new"))
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
	var out []string
	for _, e := range ents {
		if b, err := os.ReadFile(filepath.Join(dir, "new", e.Name())); err == nil {
			out = append(out, string(b))
		}
	}
	return out
}

// ---------------------------------------------------------------------------
// Postfix as the sending MTA

// postfixSender is a private Postfix instance that submits with sendmail and
// relays to opts.Relay (relayhost), with pipelining (always on in Postfix's
// client) and, with opts.TLS, smtp_tls_security_level = may.
type postfixSender struct {
	dir       string
	configDir string
}

func (p *postfixSender) Name() string   { return "postfix" }
func (p *postfixSender) Domain() string { return "postfix-sender.test" }

// startPostfixSender starts the instance (no smtpd: mail is submitted with
// sendmail -C) and stops it in t.Cleanup.
func startPostfixSender(t testing.TB, opts senderOpts) *postfixSender {
	t.Helper()
	needRoot(t)
	postfixCmd := needProgram(t, "postfix")
	postmap := needProgram(t, "postmap")
	needProgram(t, "sendmail")
	needProgram(t, "postqueue")
	dir := postfixInstanceDir(t, "willi-pfs-")
	p := &postfixSender{dir: dir, configDir: filepath.Join(dir, "etc")}
	// Local mailboxes for the sender's own domain, where bounces arrive.
	var vmb strings.Builder
	for _, u := range []string{"sender", "postmaster", "jörg"} {
		fmt.Fprintf(&vmb, "%s@%s %s/%s/\n", u, p.Domain(), p.Domain(), u)
	}
	var transport strings.Builder
	for dom, addr := range opts.Routes {
		fmt.Fprintf(&transport, "%s smtp:[%s]:%s\n", dom, hostOf(addr), portOf(addr))
	}
	for name, text := range map[string]string{"vmailbox": vmb.String(), "transport": transport.String()} {
		if err := os.WriteFile(filepath.Join(p.configDir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tlsLevel := "none"
	if opts.TLS {
		tlsLevel = "may"
	}
	mainCf := fmt.Sprintf(`# The sending MTA of willi's tests.
myhostname = mta.%[2]s
mydomain = %[2]s
myorigin = %[2]s
relayhost = [%[3]s]:%[4]s
transport_maps = hash:%[1]s/etc/transport
smtp_tls_security_level = %[5]s
smtp_tls_loglevel = 1
smtputf8_enable = yes
virtual_mailbox_domains = %[2]s
virtual_mailbox_maps = hash:%[1]s/etc/vmailbox
# One attempt per queue run; a deferred message waits for postqueue -f.
minimal_backoff_time = 300s
maximal_backoff_time = 4000s
queue_run_delay = 300s
`, dir, p.Domain(), hostOf(opts.Relay), portOf(opts.Relay), tlsLevel)
	appendMainCf(t, p.configDir, mainCf)
	for _, m := range []string{"vmailbox", "transport"} {
		if _, err := runCmd(30*time.Second, nil, postmap, "-c", p.configDir, "hash:"+filepath.Join(p.configDir, m)); err != nil {
			os.RemoveAll(dir)
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("sending postfix log (%s):\n%s", filepath.Join(dir, "maillog"), tailFile(filepath.Join(dir, "maillog"), 16<<10))
		}
		pi := &postfixInstance{Dir: dir, ConfigDir: p.configDir}
		pi.stop(postfixCmd)
		os.RemoveAll(dir)
	})
	if _, err := runCmd(60*time.Second, nil, postfixCmd, "-c", p.configDir, "start"); err != nil {
		t.Fatalf("starting the sending postfix: %v\nlog:\n%s", err, tailFile(filepath.Join(dir, "maillog"), 8<<10))
	}
	// The queue manager is up when the log says so.
	waitLogLine(t, "sending postfix", p.Log, 15*time.Second, "daemon started")
	return p
}

func (p *postfixSender) Submit(t testing.TB, from string, rcpts []string, msg []byte) {
	t.Helper()
	args := append([]string{"-C", p.configDir, "-i", "-f", from, "--"}, rcpts...)
	if _, err := runCmd(60*time.Second, msg, needProgram(t, "sendmail"), args...); err != nil {
		t.Fatalf("postfix sendmail: %v", err)
	}
}

func (p *postfixSender) Log() string {
	b, _ := os.ReadFile(filepath.Join(p.dir, "maillog"))
	return string(b)
}

func (p *postfixSender) WaitLog(t testing.TB, timeout time.Duration, substrs ...string) string {
	t.Helper()
	return waitLogLine(t, "sending postfix", p.Log, timeout, substrs...)
}

func (p *postfixSender) WaitSent(t testing.TB, rcpt string, timeout time.Duration) string {
	t.Helper()
	return p.WaitLog(t, timeout, "to=<"+rcpt+">", "status=sent (250 ")
}

func (p *postfixSender) Queue(t testing.TB) string {
	t.Helper()
	out, err := runCmd(30*time.Second, nil, needProgram(t, "postqueue"), "-c", p.configDir, "-p")
	if err != nil {
		t.Fatalf("postqueue -p: %v", err)
	}
	if strings.Contains(out, "Mail queue is empty") {
		return ""
	}
	return out
}

func (p *postfixSender) Flush(t testing.TB) {
	t.Helper()
	if _, err := runCmd(30*time.Second, nil, needProgram(t, "postqueue"), "-c", p.configDir, "-f"); err != nil {
		t.Fatalf("postqueue -f: %v", err)
	}
}

func (p *postfixSender) Mailbox(user string) []string {
	return readMaildir(filepath.Join(p.dir, "mail", p.Domain(), user))
}

// ---------------------------------------------------------------------------
// Exim as the sending MTA

// eximRoot is where test/deps.sh extracts Debian's Exim packages.
func eximRoot() string {
	if d := os.Getenv("WILLI_EXIM_ROOT"); d != "" {
		return d
	}
	return "/var/cache/willi-test/exim4"
}

// eximSender is Debian's Exim 4 run from the folder test/deps.sh extracted
// it to, with its own configuration, spool and log, inside a private mount
// namespace whose /etc/passwd and /etc/group add the Debian-exim user the
// binary drops to. Messages are submitted on the command line and delivered
// by the submitting process (-odi), all recipients in one SMTP session.
type eximSender struct {
	dir  string
	bin  string
	conf string

	mu sync.Mutex
}

// eximUID is the Debian-exim user's id inside the namespace; files it
// writes (spool, log) carry it outside.
const eximUID = 64990

func (e *eximSender) Name() string   { return "exim" }
func (e *eximSender) Domain() string { return "exim-sender.test" }

// startEximSender writes the configuration; there is no daemon to start.
func startEximSender(t testing.TB, opts senderOpts) *eximSender {
	t.Helper()
	needRoot(t)
	needProgram(t, "unshare")
	needProgram(t, "mount")
	bin := filepath.Join(eximRoot(), "usr", "sbin", "exim4")
	if fi, err := os.Stat(bin); err != nil || fi.Mode()&0o111 == 0 {
		t.Fatalf("Exim is not extracted at %s; %s", bin, peerInstallHint)
	}
	dir, err := os.MkdirTemp("/tmp", "willi-exim-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("exim mainlog:\n%s", tailFile(filepath.Join(dir, "log", "mainlog"), 16<<10))
		}
		os.RemoveAll(dir)
	})
	e := &eximSender{dir: dir, bin: bin, conf: filepath.Join(dir, "exim.conf")}
	for _, d := range []string{"spool", "log", "mail", "etc"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o750); err != nil {
			t.Fatal(err)
		}
		if d != "etc" {
			os.Chown(filepath.Join(dir, d), eximUID, eximUID)
		}
	}
	os.Chmod(filepath.Join(dir, "etc"), 0o755)
	for _, f := range []struct{ name, add string }{
		{"passwd", fmt.Sprintf("Debian-exim:x:%d:%d:Exim:/nonexistent:/usr/sbin/nologin\n", eximUID, eximUID)},
		{"group", fmt.Sprintf("Debian-exim:x:%d:\n", eximUID)},
	} {
		b, err := os.ReadFile("/etc/" + f.name)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "etc", f.name), append(b, f.add...), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var routes strings.Builder
	doms := make([]string, 0, len(opts.Routes))
	for d := range opts.Routes {
		doms = append(doms, d)
	}
	sort.Strings(doms)
	for _, d := range doms {
		fmt.Fprintf(&routes, "%s [%s]::%s byname; ", d, hostOf(opts.Routes[d]), portOf(opts.Routes[d]))
	}
	fmt.Fprintf(&routes, "* [%s]::%s byname", hostOf(opts.Relay), portOf(opts.Relay))
	tls := "hosts_avoid_tls = *"
	if opts.TLS {
		// Exim tries STARTTLS wherever it is offered; no CA to verify with.
		tls = "tls_verify_certificates ="
	}
	conf := fmt.Sprintf(`# Exim 4: the sending MTA of willi's tests.
exim_path = %[1]s
spool_directory = %[2]s/spool
log_file_path = %[2]s/log/%%slog
primary_hostname = mta.%[3]s
qualify_domain = %[3]s
domainlist local_domains = %[3]s
never_users =
keep_environment =
host_lookup =
rfc1413_hosts =
smtputf8_advertise_hosts = *
message_size_limit = 0
# The test decides when a deferred message is retried (exim -qff).
begin routers
local_user:
  driver = accept
  domains = +local_domains
  local_parts = sender : postmaster : jörg
  transport = local_maildir
relay:
  driver = manualroute
  route_list = %[4]s
  transport = remote_smtp
  self = send
begin transports
local_maildir:
  driver = appendfile
  directory = %[2]s/mail/${local_part_data}
  maildir_format
  create_directory
  user = Debian-exim
  group = Debian-exim
  mode = 0644
remote_smtp:
  driver = smtp
  allow_localhost
  hosts_try_chunking =
  %[5]s
begin retry
* * F,1d,1h
`, bin, dir, e.Domain(), routes.String(), tls)
	if err := os.WriteFile(e.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := e.run(30*time.Second, nil, "-bV"); err != nil || !strings.Contains(out, "Exim version 4") {
		t.Fatalf("exim -bV: %v\n%s", err, out)
	}
	return e
}

// run runs Exim with this configuration in a private mount namespace that
// sees our passwd and group files.
func (e *eximSender) run(timeout time.Duration, stdin []byte, args ...string) (string, error) {
	script := `mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group && shift 2 && exec "$@"`
	all := append([]string{"-m", "sh", "-c", script, "exim",
		filepath.Join(e.dir, "etc", "passwd"), filepath.Join(e.dir, "etc", "group"),
		e.bin, "-C", e.conf}, args...)
	return runCmd(timeout, stdin, "unshare", all...)
}

func (e *eximSender) Submit(t testing.TB, from string, rcpts []string, msg []byte) {
	t.Helper()
	args := append([]string{"-odi", "-i", "-f", from, "--"}, rcpts...)
	if out, err := e.run(120*time.Second, msg, args...); err != nil {
		t.Fatalf("exim submit: %v\n%s", err, out)
	}
}

func (e *eximSender) Log() string {
	b, _ := os.ReadFile(filepath.Join(e.dir, "log", "mainlog"))
	return string(b)
}

func (e *eximSender) WaitLog(t testing.TB, timeout time.Duration, substrs ...string) string {
	t.Helper()
	return waitLogLine(t, "exim", e.Log, timeout, substrs...)
}

// WaitSent: Exim logs "=>" for the first recipient of a delivery and "->"
// for the others delivered with it.
func (e *eximSender) WaitSent(t testing.TB, rcpt string, timeout time.Duration) string {
	t.Helper()
	return e.WaitLog(t, timeout, "> "+rcpt+" ", ` C="250 `)
}

func (e *eximSender) Queue(t testing.TB) string {
	t.Helper()
	out, err := e.run(30*time.Second, nil, "-bp")
	if err != nil {
		t.Fatalf("exim -bp: %v", err)
	}
	return strings.TrimSpace(out)
}

func (e *eximSender) Flush(t testing.TB) {
	t.Helper()
	if out, err := e.run(120*time.Second, nil, "-qff"); err != nil {
		t.Fatalf("exim -qff: %v\n%s", err, out)
	}
}

func (e *eximSender) Mailbox(user string) []string {
	return readMaildir(filepath.Join(e.dir, "mail", user))
}

// ---------------------------------------------------------------------------

// hostOf and portOf split host:port (as the harness's addresses are).
func hostOf(addr string) string {
	i := strings.LastIndexByte(addr, ':')
	return strings.Trim(addr[:i], "[]")
}

func portOf(addr string) string {
	return addr[strings.LastIndexByte(addr, ':')+1:]
}

// startSender starts the named sending MTA.
func startSender(t testing.TB, name string, opts senderOpts) senderMTA {
	t.Helper()
	switch name {
	case "postfix":
		return startPostfixSender(t, opts)
	case "exim":
		return startEximSender(t, opts)
	}
	t.Fatalf("unknown sender %q", name)
	return nil
}

// senderNames are the sending MTAs every sender test runs with.
var senderNames = []string{"postfix", "exim"}

// TestSenderHarnessRoutes checks the harness itself: each MTA sends a
// domain with a route to its own server and everything else to the relay,
// and logs each delivery.
func TestSenderHarnessRoutes(t *testing.T) {
	for _, name := range senderNames {
		t.Run(name, func(t *testing.T) {
			relay, relayDump := startSMTPSink(t)
			routed, routedDump := startSMTPSink(t)
			mta := startSender(t, name, senderOpts{Relay: relay, Routes: map[string]string{"example.net": routed}})
			from := "sender@" + mta.Domain()
			mta.Submit(t, from, []string{"a@example.org", "b@example.net"}, []byte("Subject: routes\n\nhello\n"))
			for _, c := range []struct{ dump, rcpt string }{{relayDump, "a@example.org"}, {routedDump, "b@example.net"}} {
				msgs := readSinkMessages(t, c.dump, 1, 30*time.Second)
				if len(msgs) != 1 || len(msgs[0].RcptArgs) != 1 || !strings.Contains(msgs[0].RcptArgs[0], c.rcpt) {
					t.Errorf("sink for %s got %+v", c.rcpt, msgs)
				}
				mta.WaitSent(t, c.rcpt, 30*time.Second)
			}
			if q := mta.Queue(t); q != "" {
				t.Errorf("queue not empty:\n%s", q)
			}
		})
	}
}
