package test

// willi under a real systemd (the container test bed): both unit pairs as
// the README enables them, what no client can do to the listener, willi
// serve's limits, users and restarts as systemd runs it.

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// ctExposureGoal bounds systemd-analyze security of both services, live.
const ctExposureGoal = 1.5

// TestSystemdPerConnectionUnits: willi.socket + willi@.service enabled as
// the README says relay mail, each session in its own sandboxed unit as
// user willi.
func TestSystemdPerConnectionUnits(t *testing.T) {
	c := installedContainer(t)
	c.sh("systemctl enable --now willi.socket")
	if got := c.active("willi.socket"); got != "active" {
		t.Fatalf("willi.socket is %s", got)
	}
	if l := c.smtpload("-addr", "127.0.0.1:25", "-mail", "-n", "5", "-c", "2"); l.n("ok") != 5 {
		t.Fatalf("5 sessions with a message each: %s", l["output"])
	}
	// A session held open: its unit, user and sandbox.
	out := c.whileHeld(`unit=$(systemctl list-units --no-legend --plain 'willi@*.service' | awk '{ print $1; exit }')
echo "unit: $unit"
pid=$(systemctl show -p MainPID --value "$unit")
echo "user: $(ps -o user= -p "$pid")"
grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/$pid/status`)
	for _, want := range []string{"banner: 220 mx.test.example ESMTP", "unit: willi@", "user: willi", "CapEff:\t0000000000000000", "NoNewPrivs:\t1", "Seccomp:\t2", "bye: 221"} {
		if !strings.Contains(out, want) {
			t.Errorf("held session: no %q in:\n%s", want, out)
		}
	}
	if e := c.exposure("willi@.service"); e > ctExposureGoal {
		t.Errorf("systemd-analyze security willi@.service: %.1f, want at most %.1f", e, ctExposureGoal)
	}
}

// TestSystemdNoClientStopsTheListener: 300 connections at once from one
// address, then from 300 addresses, leave each socket active and a normal
// session works right after, for both unit pairs. willi serve answers the
// connections over its limits with a 421 instead of closing them.
func TestSystemdNoClientStopsTheListener(t *testing.T) {
	c := installedContainer(t)
	for _, socket := range []string{"willi.socket", "willi-serve.socket"} {
		c.sh("systemctl enable --now " + socket)
		for _, sources := range []string{"1", "300"} {
			l := c.smtpload("-addr", "127.0.0.1:25", "-burst", "300", "-hold", "-sources", sources, "-timeout", "90s")
			t.Logf("%s, 300 at once from %s addresses: %s", socket, sources, strings.TrimSpace(l["output"]))
			if got := c.active(socket); got != "active" {
				t.Fatalf("%s after 300 connections at once from %s addresses: %s", socket, sources, got)
			}
			c.normalSession(socket + " after 300 at once from " + sources + " addresses")
			if l.n("failed") != 0 {
				t.Errorf("%s: failed sessions: %s", socket, l["output"])
			}
			if socket == "willi-serve.socket" {
				// Nothing is closed silently: a session or a 421.
				if l.n("closed") != 0 || l.n("ok")+l.n("refused") != 300 {
					t.Errorf("willi serve: %s", l["output"])
				}
				wantOK := map[string]int{"1": 20, "300": 200}[sources] // -max-per-source, -max-conn
				if l.n("ok") != wantOK {
					t.Errorf("willi serve, %s addresses: %d sessions, want %d: %s", sources, l.n("ok"), wantOK, l["output"])
				}
			}
		}
		c.sh("systemctl disable --now " + socket)
	}
}

// TestSystemdTriggerLimitReproduced shows that the test bed reproduces what
// the shipped willi.socket avoids: with systemd's default trigger limit for
// Accept=yes sockets, the same 300 connections take port 25 down.
func TestSystemdTriggerLimitReproduced(t *testing.T) {
	c := installedContainer(t)
	c.sh(`mkdir -p /etc/systemd/system/willi.socket.d
printf '[Socket]\nTriggerLimitIntervalSec=2s\nTriggerLimitBurst=200\n' >/etc/systemd/system/willi.socket.d/default-limit.conf
systemctl daemon-reload
systemctl enable --now willi.socket`)
	c.smtpload("-addr", "127.0.0.1:25", "-burst", "300", "-hold", "-timeout", "90s")
	if got := c.active("willi.socket"); got != "failed" {
		t.Errorf("with the default trigger limit, willi.socket is %s after 300 connections at once; the bed does not show the failure the unit avoids", got)
	}
}

// TestSystemdServeUnits: willi-serve.socket + willi-serve.service enabled
// as the README says: one willi serve on systemd's socket, sessions as
// user willi in its sandbox, per-source (IPv4 address, IPv6 /64) and total
// limits answered with 421, 200 clients at once all served.
func TestSystemdServeUnits(t *testing.T) {
	c := installedContainer(t)
	c.sh("systemctl enable --now willi.socket") // replaced by the next
	c.sh("systemctl enable --now willi-serve.socket")
	if a, b := c.active("willi-serve.socket"), c.active("willi.socket"); a != "active" || b != "inactive" {
		t.Fatalf("willi-serve.socket %s, willi.socket %s; want active, inactive", a, b)
	}
	if l := c.smtpload("-addr", "127.0.0.1:25", "-mail", "-n", "5", "-c", "2"); l.n("ok") != 5 {
		t.Fatalf("5 sessions with a message each: %s", l["output"])
	}
	out := c.whileHeld(`main=$(systemctl show -p MainPID --value willi-serve.service)
echo "serve: $(ps -o user=,args= -p "$main")"
for pid in $(ps -o pid= --ppid "$main"); do echo "session: $(ps -o user= -p "$pid")"; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/$pid/status; done`)
	for _, want := range []string{"banner: 220 mx.test.example ESMTP", "serve: willi    /opt/willi/bin/willi serve", "session: willi", "CapEff:\t0000000000000000", "NoNewPrivs:\t1", "Seccomp:\t2", "bye: 221"} {
		if !strings.Contains(out, want) {
			t.Errorf("held session: no %q in:\n%s", want, out)
		}
	}
	if e := c.exposure("willi-serve.service"); e > ctExposureGoal {
		t.Errorf("systemd-analyze security willi-serve.service: %.1f, want at most %.1f", e, ctExposureGoal)
	}

	// 200 clients from 200 addresses at once: every one gets a banner.
	l := c.smtpload("-addr", "127.0.0.1:25", "-burst", "200", "-hold", "-sources", "200", "-timeout", "60s")
	t.Logf("200 at once: %s", strings.TrimSpace(l["output"]))
	if l.n("ok") != 200 {
		t.Errorf("200 clients at once: %d served: %s", l.n("ok"), l["output"])
	}

	// Small limits by a drop-in, as the unit's comment shows.
	c.sh(`mkdir -p /etc/systemd/system/willi-serve.service.d
printf '[Service]\nExecStart=\nExecStart=/opt/willi/bin/willi serve -config /opt/willi/etc/willi.conf -max-conn 6 -max-per-source 2\n' >/etc/systemd/system/willi-serve.service.d/limits.conf
systemctl daemon-reload
systemctl restart willi-serve.service
ip addr add 2001:db8:0:1::1/64 dev lo nodad
ip addr add 2001:db8:0:1::2/64 dev lo nodad
ip addr add 2001:db8:0:1::3/64 dev lo nodad
ip addr add 2001:db8:0:2::1/64 dev lo nodad
ip addr add 2001:db8:0:3::1/64 dev lo nodad`)
	for _, tc := range []struct {
		what, src      string
		n, ok, refused int
		code           string
	}{
		{"3 from one IPv4 address", "127.0.0.5", 3, 2, 1, "4.7.0"},
		{"2 each from two IPv4 addresses", "127.0.0.5,127.0.0.6", 4, 4, 0, ""},
		{"3 from three addresses of one IPv6 /64", "2001:db8:0:1::1,2001:db8:0:1::2,2001:db8:0:1::3", 3, 2, 1, "4.7.0"},
		{"3 from three IPv6 /64s", "2001:db8:0:1::1,2001:db8:0:2::1,2001:db8:0:3::1", 3, 3, 0, ""},
		{"8 from eight IPv4 addresses", "127.0.0.11,127.0.0.12,127.0.0.13,127.0.0.14,127.0.0.15,127.0.0.16,127.0.0.17,127.0.0.18", 8, 6, 2, "4.3.2"},
	} {
		addr := "127.0.0.1:25"
		if strings.Contains(tc.src, ":") {
			addr = "[2001:db8:0:1::1]:25"
		}
		l := c.smtpload("-addr", addr, "-burst", fmt.Sprint(tc.n), "-hold", "-src", tc.src, "-timeout", "30s")
		want := ""
		if tc.refused > 0 {
			want = fmt.Sprintf("%s:%d", tc.code, tc.refused)
		}
		if l.n("ok") != tc.ok || l.n("refused") != tc.refused || l["refused_codes"] != want || l.n("closed") != 0 {
			t.Errorf("%s: want %d sessions and %d refused (%s): %s", tc.what, tc.ok, tc.refused, want, l["output"])
		}
		time.Sleep(300 * time.Millisecond) // the sessions' slots are given back
	}
}

// ctResult is what a command in the container printed, and its error.
type ctResult struct {
	out string
	err error
}

// messageAcross starts a session that goes into DATA and, once action has
// begun, ends its message 3 s later; it returns the session's transcript.
func (c *container) messageAcross(action func()) ctResult {
	c.t.Helper()
	session := make(chan ctResult, 1)
	go func() {
		out, err := c.run("bash", "-ec", `rm -f /run/in-data
exec 3<>/dev/tcp/127.0.0.1/25
say() { printf '%s\r\n' "$1" >&3; }
reply() { while IFS= read -r l <&3; do echo "$l"; case $l in [0-9][0-9][0-9]" "*) return;; esac; done; }
reply; say "EHLO client.example"; reply
say "MAIL FROM:<a@example.org>"; reply
say "RCPT TO:<b@example.com>"; reply
say DATA; reply
touch /run/in-data
sleep 3
say "Subject: across a restart"; say ""; say "body"; say "."; reply
say QUIT; reply`)
		session <- ctResult{out, err}
	}()
	c.sh("for i in $(seq 100); do [ -e /run/in-data ] && exit 0; sleep 0.1; done; exit 1")
	action()
	s := <-session
	if s.err != nil || strings.Count(s.out, "\n250 ") < 3 || !strings.Contains(s.out, "221 ") { // EHLO's last line, MAIL, RCPT, message
		c.t.Errorf("the message across it was not accepted: %v\n%s", s.err, s.out)
	}
	return s
}

// TestSystemdServeRestart: systemctl restart willi-serve.service lets a
// session in progress finish its message, and a client that connects
// during the restart is served by the new willi serve.
func TestSystemdServeRestart(t *testing.T) {
	c := installedContainer(t)
	c.sh("systemctl enable --now willi-serve.socket")
	before := strings.TrimSpace(c.sh("systemctl show -p MainPID --value willi-serve.service"))
	var l load
	c.messageAcross(func() {
		restart := make(chan ctResult, 1)
		go func() {
			out, err := c.run("systemctl", "restart", "willi-serve.service")
			restart <- ctResult{out, err}
		}()
		time.Sleep(500 * time.Millisecond)
		// Connects while the old willi serve drains: waits in the socket's
		// backlog, then gets the new one's banner.
		l = c.smtpload("-addr", "127.0.0.1:25", "-mail", "-n", "1", "-timeout", "60s")
		if r := <-restart; r.err != nil {
			t.Fatalf("systemctl restart: %v\n%s", r.err, r.out)
		}
	})
	if l.n("ok") != 1 {
		t.Errorf("a client connecting during the restart: %s", l["output"])
	}
	after := strings.TrimSpace(c.sh("systemctl show -p MainPID --value willi-serve.service"))
	if after == before || after == "0" {
		t.Errorf("willi serve was not restarted: MainPID %s, then %s", before, after)
	}
	c.normalSession("after the restart")
}

// TestSystemdServeReload: systemctl reload willi-serve.service re-executes
// willi serve in place (the program file an upgrade left at its path): the
// same main process, a session in progress finishes its message, and
// clients that connect meanwhile are served at once, not after a drain.
func TestSystemdServeReload(t *testing.T) {
	c := installedContainer(t)
	c.sh("systemctl enable --now willi-serve.socket")
	c.normalSession("before the reload")
	before := strings.TrimSpace(c.sh("systemctl show -p MainPID --value willi-serve.service"))
	var l load
	c.messageAcross(func() {
		c.sh("systemctl reload willi-serve.service")
		l = c.smtpload("-addr", "127.0.0.1:25", "-mail", "-n", "5", "-timeout", "60s")
	})
	t.Logf("5 sessions right after the reload: %s", strings.TrimSpace(l["output"]))
	if l.n("ok") != 5 {
		t.Errorf("clients connecting right after the reload: %s", l["output"])
	}
	after := strings.TrimSpace(c.sh("systemctl show -p MainPID --value willi-serve.service"))
	if after != before {
		t.Errorf("willi serve's MainPID changed across a reload: %s, then %s", before, after)
	}
	log := c.sh("journalctl -u willi-serve.service --no-pager -o cat")
	for _, want := range []string{`msg="reloading: re-executing"`, "sessions_taken_over=1"} {
		if !strings.Contains(log, want) {
			t.Errorf("journal lacks %s:\n%s", want, log)
		}
	}
	if a := c.active("willi-serve.service"); a != "active" {
		t.Errorf("willi-serve.service is %s after the reload", a)
	}
}

// TestSystemdUpgradeInPlace: the README's upgrade, under load: a newer
// release's install.sh over the running willi-serve.socket, then systemctl
// reload willi-serve.service. A message in progress across both is
// delivered, willi serve keeps its PID and now runs the new version, and
// the install kept the config.
func TestSystemdUpgradeInPlace(t *testing.T) {
	c := installedContainer(t)
	dir := t.TempDir()
	if out, err := exec.Command("make", "-s", "release", "DIST="+dir, "RELEASE_VERSION=v9.9.9-upgrade").CombinedOutput(); err != nil {
		t.Fatalf("make release: %v\n%s", err, out)
	}
	c.put(filepath.Join(dir, "willi-v9.9.9-upgrade.tar.gz"), "/root/willi-v9.9.9-upgrade.tar.gz", 0o644)
	c.sh("systemctl enable --now willi-serve.socket")
	c.normalSession("before the upgrade")
	before := strings.TrimSpace(c.sh("systemctl show -p MainPID --value willi-serve.service"))
	c.messageAcross(func() {
		out := c.sh(`cd /root && tar xzf willi-v9.9.9-upgrade.tar.gz && cd willi-v9.9.9-upgrade && ./install.sh
systemctl reload willi-serve.service`)
		if !strings.Contains(out, "systemctl reload willi-serve.service") {
			t.Errorf("install.sh does not tell how willi serve takes the upgrade:\n%s", out)
		}
	})
	c.normalSession("after the upgrade")
	if after := strings.TrimSpace(c.sh("systemctl show -p MainPID --value willi-serve.service")); after != before {
		t.Errorf("willi serve's MainPID changed: %s, then %s", before, after)
	}
	log := c.sh("journalctl -u willi-serve.service --no-pager -o cat")
	if !regexp.MustCompile(`msg=listening .*version=v9\.9\.9-upgrade sessions_taken_over=1`).MatchString(log) {
		t.Errorf("willi serve does not run the new version with the session taken over:\n%s", log)
	}
	if conf := c.sh("cat /opt/willi/etc/willi.conf"); !strings.Contains(conf, `hostname = "mx.test.example"`) {
		t.Errorf("the upgrade changed the config:\n%s", conf)
	}
}
