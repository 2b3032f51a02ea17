package test

// The systemd test bed: a booted Debian 12 container (test/container.sh on
// the root test/deps.sh builds), systemd as PID 1, willi installed from the
// release tarball by install.sh as the README says, driven from inside over
// the container's own loopback.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// container is one booted test container.
type container struct {
	t    testing.TB
	name string
}

var (
	ctArtifactsOnce sync.Once
	ctTarball       string // the release tarball, from make release
	ctSMTPLoad      string // bench/smtpload, static
	ctArtifactsErr  error
	ctSeq           atomic.Int32
)

// ctArtifacts builds the release tarball and the load generator once.
func ctArtifacts(t testing.TB) (tarball, smtpload string) {
	t.Helper()
	ctArtifactsOnce.Do(func() {
		dir, err := os.MkdirTemp("", "willi-ct-")
		if err != nil {
			ctArtifactsErr = err
			return
		}
		out, err := exec.Command("make", "-s", "release", "DIST="+dir).CombinedOutput()
		if err != nil {
			ctArtifactsErr = fmt.Errorf("make release: %v\n%s", err, out)
			return
		}
		tarballs, _ := filepath.Glob(filepath.Join(dir, "willi-*.tar.gz"))
		if len(tarballs) != 1 {
			ctArtifactsErr = fmt.Errorf("make release made %v", tarballs)
			return
		}
		ctTarball = tarballs[0]
		ctSMTPLoad = filepath.Join(dir, "smtpload")
		cmd := exec.Command("go", "build", "-trimpath", "-o", ctSMTPLoad, "./bench/smtpload")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			ctArtifactsErr = fmt.Errorf("go build smtpload: %v\n%s", err, out)
		}
	})
	if ctArtifactsErr != nil {
		t.Fatal(ctArtifactsErr)
	}
	return ctTarball, ctSMTPLoad
}

// bootContainer boots a fresh container (a throw-away overlay of the cached
// root); the cleanup powers it off. A bed that cannot boot fails the test.
func bootContainer(t testing.TB) *container {
	t.Helper()
	needRoot(t)
	needProgram(t, "systemd-nspawn")
	needProgram(t, "nsenter")
	c := &container{t: t, name: fmt.Sprintf("willi-test-%d-%d", os.Getpid(), ctSeq.Add(1))}
	out, err := exec.Command("test/container.sh", "boot", c.name).CombinedOutput()
	t.Cleanup(func() {
		if t.Failed() {
			if log, err := c.run("journalctl", "--no-pager", "-n", "80"); err == nil {
				t.Logf("container journal (last lines):\n%s", log)
			}
		}
		exec.Command("test/container.sh", "stop", c.name).Run()
	})
	if err != nil {
		t.Fatalf("the systemd test container did not boot (%s): %v\n%s", peerInstallHint, err, out)
	}
	return c
}

// run runs a command in the container and returns its combined output.
func (c *container) run(args ...string) (string, error) {
	cmd := exec.Command("test/container.sh", append([]string{"run", c.name}, args...)...)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Minute):
		cmd.Process.Kill()
		<-done
		err = fmt.Errorf("timed out: %v", err)
	}
	return string(out), err
}

// sh runs a bash script in the container and fails the test if it fails.
func (c *container) sh(script string) string {
	c.t.Helper()
	out, err := c.run("bash", "-ec", script)
	if err != nil {
		c.t.Fatalf("in the container: %v\nscript:\n%s\noutput:\n%s", err, script, out)
	}
	return out
}

// put copies a local file into the container.
func (c *container) put(local, dest string, mode os.FileMode) {
	c.t.Helper()
	if out, err := exec.Command("test/container.sh", "put", c.name, local, dest).CombinedOutput(); err != nil {
		c.t.Fatalf("copying %s into the container: %v\n%s", local, err, out)
	}
	c.sh(fmt.Sprintf("chmod %o %s", mode, dest))
}

// ctSinkPort is where smtp-sink, the upstream, listens in the container.
const ctSinkPort = 2526

// installedContainer boots a container, installs willi from the release
// tarball following the README's Install section, with a config that routes
// everything to smtp-sink, and starts the sink. No socket is enabled yet.
func installedContainer(t testing.TB) *container {
	t.Helper()
	tarball, smtpload := ctArtifacts(t)
	c := bootContainer(t)
	c.put(tarball, "/root/"+filepath.Base(tarball), 0o644)
	c.put(smtpload, "/usr/local/bin/smtpload", 0o755)
	release := strings.TrimSuffix(filepath.Base(tarball), ".tar.gz")
	// As the README says (the editor's work done by a here-document).
	c.sh(fmt.Sprintf(`cd /root
tar xzf %s.tar.gz && cd %s
./install.sh
cp /opt/willi/etc/willi.conf.example /opt/willi/etc/willi.conf
cp /opt/willi/etc/routes.csv.example /opt/willi/etc/routes.csv
cat >/opt/willi/etc/willi.conf <<EOF
hostname = "mx.test.example"
[[mapping]]
type = "static"
server = "127.0.0.1:%d"
EOF
/opt/willi/bin/willi check`, release, release, ctSinkPort))
	c.sh(fmt.Sprintf(`systemd-run --quiet --unit=sink /usr/sbin/smtp-sink -u postfix -c 127.0.0.1:%d 1000
for i in $(seq 100); do ss -Hltn "sport = :%d" | grep -q . && exit 0; sleep 0.05; done
echo "smtp-sink does not listen" >&2; exit 1`, ctSinkPort, ctSinkPort))
	return c
}

// load is one smtpload run's result line.
type load map[string]string

func (l load) n(key string) int {
	v, _ := strconv.Atoi(l[key])
	return v
}

var loadField = regexp.MustCompile(`(\w+)=(\S*)`)

// smtpload runs the load generator in the container.
func (c *container) smtpload(args ...string) load {
	c.t.Helper()
	out, _ := c.run(append([]string{"smtpload"}, args...)...) // exit 1 on failures: judged by the caller
	l := load{"output": out}
	for _, m := range loadField.FindAllStringSubmatch(out, -1) {
		l[m[1]] = m[2]
	}
	if _, ok := l["sessions"]; !ok {
		c.t.Fatalf("smtpload %v: %s", args, out)
	}
	return l
}

// normalSession: one session with a message relayed to the sink works.
func (c *container) normalSession(what string) {
	c.t.Helper()
	if l := c.smtpload("-addr", "127.0.0.1:25", "-mail", "-n", "1"); l.n("ok") != 1 {
		c.t.Errorf("%s: a normal session does not work: %s", what, l["output"])
	}
}

// whileHeld runs script in the container while a session on port 25 is
// held open (after its banner, before its QUIT); the output has the
// script's lines between "banner: ..." and "bye: ...".
func (c *container) whileHeld(script string) string {
	c.t.Helper()
	return c.sh("exec 3<>/dev/tcp/127.0.0.1/25\nread -r banner <&3\necho \"banner: $banner\"\n" +
		script + "\nprintf 'QUIT\\r\\n' >&3\nread -r bye <&3\necho \"bye: $bye\"")
}

// active is systemctl is-active UNIT.
func (c *container) active(unit string) string {
	out, _ := c.run("systemctl", "is-active", unit)
	return strings.TrimSpace(out)
}

// exposure is systemd-analyze security's overall exposure of a unit.
func (c *container) exposure(unit string) float64 {
	c.t.Helper()
	out, _ := c.run("systemd-analyze", "security", "--no-pager", unit)
	m := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`).FindStringSubmatch(out)
	if m == nil {
		c.t.Fatalf("systemd-analyze security %s:\n%s", unit, out)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}
