package test

// The operator's path: install.sh into a scratch root, the systemd units
// (verify and security exposure), the release tarball, the shipped example
// config and CSV, and willi started per connection by real xinetd and real
// tcpserver from the shipped xinetd.d file and run script.

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"willi/internal/smtptest"
)

// deployReleaseFiles are the files a release ships besides the binary, as in
// the Makefile's RELEASE_FILES.
var deployReleaseFiles = []string{
	"install.sh", "willi.socket", "willi@.service", "willi-serve.socket", "willi-serve.service",
	"README.md", "LICENSE",
	"contrib/xinetd/willi", "contrib/tcpserver/run",
	"etc/willi.conf.example", "etc/routes.csv.example",
}

// deployUnits are the systemd units install.sh installs.
var deployUnits = []string{"willi.socket", "willi@.service", "willi-serve.socket", "willi-serve.service"}

// deployExposureGoal is the goal for systemd-analyze security.
const deployExposureGoal = 1.5

// deployRun runs a command with a time bound and returns its combined output.
func deployRun(t testing.TB, timeout time.Duration, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s timed out after %v: %w", name, timeout, err)
	}
	return string(out), err
}

// deployMustRun is deployRun that fails the test on error.
func deployMustRun(t testing.TB, timeout time.Duration, env []string, name string, args ...string) string {
	t.Helper()
	out, err := deployRun(t, timeout, env, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// deployOpenDir is a t.TempDir() that unprivileged users (nobody, under
// xinetd and tcpserver) can enter.
func deployOpenDir(t testing.TB) string {
	t.Helper()
	d := t.TempDir()
	for p := d; p != os.TempDir() && p != "/" && strings.HasPrefix(p, os.TempDir()); p = filepath.Dir(p) {
		os.Chmod(p, 0o755)
	}
	return d
}

// deployCopy copies a file, keeping its permission bits (a release's
// files, or a program to run from a folder of its own).
func deployCopy(t testing.TB, from, to string) {
	t.Helper()
	fi, err := os.Stat(from)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, fi.Mode().Perm()); err != nil {
		t.Fatal(err)
	}
	os.Chmod(to, fi.Mode().Perm())
}

// deployStageRelease lays out an unpacked release folder from the work tree
// and the test build of willi. README.md is optional here (install.sh skips
// it); `make release` requires it.
func deployStageRelease(t testing.TB) string {
	t.Helper()
	bin := buildWilli(t)
	dir := filepath.Join(deployOpenDir(t), "willi-vtest")
	for _, f := range deployReleaseFiles {
		if _, err := os.Stat(f); os.IsNotExist(err) && f == "README.md" {
			continue
		}
		deployCopy(t, f, filepath.Join(dir, f))
	}
	deployCopy(t, bin, filepath.Join(dir, "willi"))
	return dir
}

// deployInstall runs install.sh from release into the scratch root.
func deployInstall(t testing.TB, release, root string, args ...string) string {
	t.Helper()
	env := []string{"DESTDIR=" + root, "WILLI_GROUP=" + deployGroup(t)}
	return deployMustRun(t, time.Minute, env, "sh", append([]string{filepath.Join(release, "install.sh")}, args...)...)
}

// deployGroup is the group the scratch installs hand the config to: one that
// exists on every Debian host, standing in for willi.
func deployGroup(t testing.TB) string {
	t.Helper()
	for _, g := range []string{"nogroup", "nobody"} {
		if _, err := user.LookupGroup(g); err == nil {
			return g
		}
	}
	t.Fatal("neither group nogroup nor nobody exists")
	return ""
}

type deployWant struct {
	path  string
	mode  fs.FileMode // permission and setgid bits
	group string      // "" = root
	dir   bool
}

func deployCheckFiles(t testing.TB, root string, want []deployWant) {
	t.Helper()
	for _, w := range want {
		fi, err := os.Lstat(filepath.Join(root, w.path))
		if err != nil {
			t.Errorf("%s: %v", w.path, err)
			continue
		}
		if fi.IsDir() != w.dir {
			t.Errorf("%s: is dir %v, want %v", w.path, fi.IsDir(), w.dir)
		}
		got := fi.Mode().Perm() | fi.Mode()&fs.ModeSetgid
		if got != w.mode {
			t.Errorf("%s: mode %v, want %v", w.path, got, w.mode)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if os.Geteuid() == 0 {
			if st.Uid != 0 {
				t.Errorf("%s: owner uid %d, want root", w.path, st.Uid)
			}
			wantGid := uint32(0)
			if w.group != "" {
				g, err := user.LookupGroup(w.group)
				if err != nil {
					t.Fatal(err)
				}
				n, _ := strconv.Atoi(g.Gid)
				wantGid = uint32(n)
			}
			if st.Gid != wantGid {
				t.Errorf("%s: group gid %d, want %d (%q)", w.path, st.Gid, wantGid, w.group)
			}
		}
	}
}

// deployNoWorldWritable fails on any world-writable file or folder under root.
func deployNoWorldWritable(t testing.TB, root string) {
	t.Helper()
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Error(err)
			return nil
		}
		fi, err := d.Info()
		if err == nil && fi.Mode()&fs.ModeSymlink == 0 && fi.Mode().Perm()&0o002 != 0 {
			t.Errorf("%s is world-writable (%v)", p, fi.Mode())
		}
		return nil
	})
}

type deployStamp struct {
	data  string
	mode  fs.FileMode
	mtime time.Time
}

func deployStat(t testing.TB, p string) deployStamp {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return deployStamp{string(b), fi.Mode(), fi.ModTime()}
}

func TestDeployInstallScratchRoot(t *testing.T) {
	release := deployStageRelease(t)
	root := t.TempDir()
	// xinetd is "installed" in the scratch root: its example goes there.
	if err := os.MkdirAll(filepath.Join(root, "etc/xinetd.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	grp := deployGroup(t)
	out := deployInstall(t, release, root)
	t.Logf("install.sh:\n%s", out)

	want := []deployWant{
		{path: "opt/willi", mode: 0o755, dir: true},
		{path: "opt/willi/bin", mode: 0o755, dir: true},
		{path: "opt/willi/bin/willi", mode: 0o755},
		{path: "opt/willi/etc", mode: 0o750 | fs.ModeSetgid, group: grp, dir: true},
		{path: "opt/willi/etc/willi.conf.example", mode: 0o640, group: grp},
		{path: "opt/willi/etc/routes.csv.example", mode: 0o640, group: grp},
		{path: "opt/willi/etc/routes.csv", mode: 0o640, group: grp},
		{path: "opt/willi/share/contrib/tcpserver/run", mode: 0o755},
		{path: "opt/willi/share/contrib/xinetd/willi", mode: 0o644},
		{path: "opt/willi/share/LICENSE", mode: 0o644},
		{path: "etc/systemd/system/willi.socket", mode: 0o644},
		{path: "etc/systemd/system/willi@.service", mode: 0o644},
		{path: "etc/systemd/system/willi-serve.socket", mode: 0o644},
		{path: "etc/systemd/system/willi-serve.service", mode: 0o644},
		{path: "opt/willi/share/systemd/willi-serve.socket", mode: 0o644},
		{path: "opt/willi/share/systemd/willi-serve.service", mode: 0o644},
		{path: "etc/xinetd.d/willi", mode: 0o644},
	}
	deployCheckFiles(t, root, want)
	deployNoWorldWritable(t, root)
	if _, err := os.Stat(filepath.Join(root, "opt/willi/etc/willi.conf")); !os.IsNotExist(err) {
		t.Errorf("install.sh created willi.conf (%v): the operator makes it from the example", err)
	}
	xinetd, _ := os.ReadFile(filepath.Join(root, "etc/xinetd.d/willi"))
	if !regexp.MustCompile(`(?m)^\s*disable\s*=\s*yes\s*$`).Match(xinetd) {
		t.Errorf("/etc/xinetd.d/willi is not installed disabled:\n%s", xinetd)
	}
	for _, f := range deployUnits {
		got, _ := os.ReadFile(filepath.Join(root, "etc/systemd/system", f))
		src, _ := os.ReadFile(f)
		if !bytes.Equal(got, src) {
			t.Errorf("installed %s differs from the shipped one", f)
		}
	}

	// The operator's files, then a second run: idempotent, and theirs
	// untouched (content, mode, time).
	etc := filepath.Join(root, "opt/willi/etc")
	conf := filepath.Join(etc, "willi.conf")
	if err := os.WriteFile(conf, []byte("# mine\n[[mapping]]\ntype = \"static\"\nserver = \"mine.test\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	csv := filepath.Join(etc, "routes.csv")
	if err := os.WriteFile(csv, []byte("pattern,server\nmine.test,mine.test:25\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	xinetdPath := filepath.Join(root, "etc/xinetd.d/willi")
	if err := os.WriteFile(xinetdPath, bytes.Replace(xinetd, []byte("disable         = yes"), []byte("disable         = no"), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	before := map[string]deployStamp{conf: deployStat(t, conf), csv: deployStat(t, csv), xinetdPath: deployStat(t, xinetdPath)}
	time.Sleep(10 * time.Millisecond) // a rewrite would show in the mtime
	out = deployInstall(t, release, root)
	for _, s := range []string{"kept /opt/willi/etc/willi.conf", "kept /opt/willi/etc/routes.csv", "kept /etc/xinetd.d/willi"} {
		if !strings.Contains(out, s) {
			t.Errorf("second install.sh run does not say %q:\n%s", s, out)
		}
	}
	for p, st := range before {
		if now := deployStat(t, p); now != st {
			t.Errorf("second install.sh run changed %s", p)
		}
	}
	deployCheckFiles(t, root, want)
	deployNoWorldWritable(t, root)
	if left, _ := filepath.Glob(filepath.Join(root, "opt/willi/*/.*.new")); len(left) > 0 {
		t.Errorf("install.sh left temporary files: %v", left)
	}

	// Uninstall: program, units and share go; config, CSV and the
	// operator's changed xinetd file stay.
	out = deployInstall(t, release, root, "--uninstall")
	t.Logf("install.sh --uninstall:\n%s", out)
	for _, gone := range []string{"opt/willi/bin/willi", "opt/willi/bin", "opt/willi/share",
		"etc/systemd/system/willi.socket", "etc/systemd/system/willi@.service",
		"etc/systemd/system/willi-serve.socket", "etc/systemd/system/willi-serve.service"} {
		if _, err := os.Lstat(filepath.Join(root, gone)); !os.IsNotExist(err) {
			t.Errorf("after uninstall %s is still there (%v)", gone, err)
		}
	}
	for p, st := range before {
		if now := deployStat(t, p); now != st {
			t.Errorf("uninstall changed or removed %s", p)
		}
	}
	for _, kept := range []string{"willi.conf.example", "routes.csv.example"} {
		if _, err := os.Stat(filepath.Join(etc, kept)); err != nil {
			t.Errorf("uninstall removed the config folder's %s: %v", kept, err)
		}
	}

	// An unchanged xinetd file is ours and goes with the program.
	root2 := t.TempDir()
	os.MkdirAll(filepath.Join(root2, "etc/xinetd.d"), 0o755)
	deployInstall(t, release, root2)
	deployInstall(t, release, root2, "--uninstall")
	if _, err := os.Stat(filepath.Join(root2, "etc/xinetd.d/willi")); !os.IsNotExist(err) {
		t.Errorf("uninstall kept an unchanged /etc/xinetd.d/willi (%v)", err)
	}
	// Without xinetd on the host, no /etc/xinetd.d is made.
	root3 := t.TempDir()
	deployInstall(t, release, root3)
	if _, err := os.Stat(filepath.Join(root3, "etc/xinetd.d")); !os.IsNotExist(err) {
		t.Errorf("install.sh created /etc/xinetd.d on a host without xinetd (%v)", err)
	}
}

func TestDeployInstallRefusesNonRootWithoutDestdir(t *testing.T) {
	if os.Geteuid() != 0 {
		out, err := deployRun(t, time.Minute, nil, "sh", "install.sh")
		if err == nil || !strings.Contains(out, "root") {
			t.Fatalf("install.sh as non-root without DESTDIR: err %v, output:\n%s", err, out)
		}
		return
	}
	// As root: the same through setpriv, as user nobody.
	setpriv := needProgram(t, "setpriv")
	out, err := deployRun(t, time.Minute, nil, setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", "sh", "install.sh")
	if err == nil || !strings.Contains(out, "run me as root") {
		t.Fatalf("install.sh as nobody without DESTDIR: err %v, output:\n%s", err, out)
	}
	out, err = deployRun(t, time.Minute, nil, "sh", "install.sh", "--bogus")
	if err == nil || !strings.Contains(out, "unknown argument") {
		t.Fatalf("install.sh --bogus: err %v, output:\n%s", err, out)
	}
}

// deploySystemdRoot installs into a scratch root that also holds the host's
// systemd units (sysinit.target and friends) and /bin/sh (ExecReload=), so
// that systemd-analyze --root= checks the installed units against the
// installed binary.
func deploySystemdRoot(t testing.TB) string {
	t.Helper()
	release := deployStageRelease(t)
	root := t.TempDir()
	deployInstall(t, release, root)
	sh, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	deployCopy(t, sh, filepath.Join(root, "bin/sh"))
	for _, d := range []string{"/usr/lib/systemd/system", "/lib/systemd/system"} {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			dst := filepath.Join(root, "usr/lib/systemd")
			os.MkdirAll(dst, 0o755)
			deployMustRun(t, time.Minute, nil, "cp", "-a", d, dst)
			break
		}
	}
	return root
}

func TestDeploySystemdVerify(t *testing.T) {
	sa := needProgram(t, "systemd-analyze")
	root := deploySystemdRoot(t)
	out, err := deployRun(t, 2*time.Minute, nil, sa, append([]string{"verify", "--root=" + root}, deployUnits...)...)
	// verify exits 0 on some problems it only warns about: any output is one.
	if err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// Without the binary the check must fail: it really looked.
	os.Remove(filepath.Join(root, "opt/willi/bin/willi"))
	out, err = deployRun(t, 2*time.Minute, nil, sa, append([]string{"verify", "--root=" + root}, deployUnits...)...)
	if err == nil || !strings.Contains(out, "/opt/willi/bin/willi") {
		t.Fatalf("systemd-analyze verify without the binary: err %v\n%s", err, out)
	}

	// What the units promise.
	sock, _ := os.ReadFile("willi.socket")
	svc, _ := os.ReadFile("willi@.service")
	for _, re := range []string{`(?m)^Accept=yes$`, `(?m)^ListenStream=25$`, `(?m)^BindIPv6Only=both$`,
		`(?m)^MaxConnections=\d+$`, `(?m)^MaxConnectionsPerSource=\d+$`, `(?m)^WantedBy=sockets.target$`,
		// No trigger limit: a burst of connections cannot put the socket
		// in "failed (trigger-limit-hit)" (TestSystemdNoClientStopsTheListener).
		`(?m)^TriggerLimitIntervalSec=0$`, `(?m)^Conflicts=willi-serve.socket$`} {
		if !regexp.MustCompile(re).Match(sock) {
			t.Errorf("willi.socket lacks %s", re)
		}
	}
	for _, re := range []string{`(?m)^ExecStart=/opt/willi/bin/willi -config /opt/willi/etc/willi.conf$`,
		`(?m)^User=willi$`, `(?m)^StandardError=journal$`, `(?m)^CacheDirectory=willi$`,
		`(?m)^NoNewPrivileges=yes$`, `(?m)^ProtectSystem=strict$`, `(?m)^ProtectHome=yes$`,
		`(?m)^PrivateTmp=yes$`, `(?m)^PrivateDevices=yes$`, `(?m)^CapabilityBoundingSet=$`,
		`(?m)^RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX$`, `(?m)^SystemCallFilter=@system-service$`,
		`(?m)^MemoryMax=\S+$`, `(?m)^RuntimeMaxSec=\S+$`, `(?m)^CollectMode=inactive-or-failed$`,
		`(?m)^Environment=GOMAXPROCS=1$`} {
		if !regexp.MustCompile(re).Match(svc) {
			t.Errorf("willi@.service lacks %s", re)
		}
	}
	// The connection comes as LISTEN_FDS (fd 3), not on standard input: no
	// stray output can reach the client.
	if regexp.MustCompile(`(?m)^StandardInput=socket`).Match(svc) {
		t.Errorf("willi@.service hands the socket as standard input; the design uses fd 3")
	}

	// willi serve's pair: systemd's listening socket to one willi serve,
	// which lets sessions finish on stop (SIGTERM to it alone).
	ssock, _ := os.ReadFile("willi-serve.socket")
	ssvc, _ := os.ReadFile("willi-serve.service")
	for _, re := range []string{`(?m)^Accept=no$`, `(?m)^ListenStream=25$`, `(?m)^BindIPv6Only=both$`,
		`(?m)^Conflicts=willi.socket$`, `(?m)^WantedBy=sockets.target$`} {
		if !regexp.MustCompile(re).Match(ssock) {
			t.Errorf("willi-serve.socket lacks %s", re)
		}
	}
	for _, re := range []string{`(?m)^ExecStart=/opt/willi/bin/willi serve -config /opt/willi/etc/willi.conf$`,
		`(?m)^User=willi$`, `(?m)^KillMode=mixed$`, `(?m)^TimeoutStopSec=\S+$`, `(?m)^StandardError=journal$`,
		`(?m)^NoNewPrivileges=yes$`, `(?m)^ProtectSystem=strict$`, `(?m)^CapabilityBoundingSet=$`,
		`(?m)^SystemCallFilter=@system-service$`, `(?m)^MemoryMax=\S+$`, `(?m)^TasksMax=\d+$`} {
		if !regexp.MustCompile(re).Match(ssvc) {
			t.Errorf("willi-serve.service lacks %s", re)
		}
	}
}

func TestDeploySystemdSecurity(t *testing.T) {
	sa := needProgram(t, "systemd-analyze")
	root := deploySystemdRoot(t)
	for _, unit := range []string{"willi@.service", "willi-serve.service"} {
		out, err := deployRun(t, 2*time.Minute, nil, sa, "security", "--offline=yes", "--root="+root, unit)
		if err != nil {
			t.Fatalf("systemd-analyze security %s: %v\n%s", unit, err, out)
		}
		m := regexp.MustCompile(`Overall exposure level for \S*: ([0-9.]+) (\S+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no overall exposure level in:\n%s", out)
		}
		exposure, _ := strconv.ParseFloat(m[1], 64)
		t.Logf("systemd-analyze security %s: exposure %.1f %s (goal <= %.1f)", unit, exposure, m[2], deployExposureGoal)
		if exposure > deployExposureGoal {
			t.Errorf("%s: exposure %.1f is above the goal %.1f:\n%s", unit, exposure, deployExposureGoal, out)
		}
	}
}

// TestDeployExampleRoutes installs into a scratch root, makes willi.conf
// from the example as the next steps say, and asks the installed willi.
func TestDeployExampleRoutes(t *testing.T) {
	release := deployStageRelease(t)
	root := t.TempDir()
	deployInstall(t, release, root)
	etc := filepath.Join(root, "opt/willi/etc")
	deployCopy(t, filepath.Join(etc, "willi.conf.example"), filepath.Join(etc, "willi.conf"))
	bin := filepath.Join(root, "opt/willi/bin/willi")
	conf := filepath.Join(etc, "willi.conf")

	if out, err := deployRun(t, time.Minute, nil, bin, "check", "-config", conf); err != nil {
		t.Errorf("willi check on the example config and sample CSV: %v\n%s", err, out)
	}
	for addr, server := range map[string]string{
		"postmaster@example.com":   "mail1.internal:25",
		"someone@Example.COM":      "mail2.internal:25",
		"x@deep.sub.example.net":   "[2001:db8::25]:2525",
		"x@example.net":            "no route",
		"nobody@elsewhere.invalid": "no route",
	} {
		out, _ := deployRun(t, time.Minute, nil, bin, "lookup", "-config", conf, addr)
		if !strings.Contains(out, server) {
			t.Errorf("willi lookup %s: want %q in\n%s", addr, server, out)
		}
	}
}

// deployTarEntry is one member of the release tarball.
type deployTarEntry struct {
	mode     int64
	uid, gid int
	typ      byte
}

func TestDeployMakeRelease(t *testing.T) {
	needProgram(t, "make")
	needProgram(t, "git")
	dist := t.TempDir()
	out := deployMustRun(t, 5*time.Minute, nil, "make", "-s", "release", "DIST="+dist)
	tarballs, _ := filepath.Glob(filepath.Join(dist, "willi-v*.tar.gz"))
	if len(tarballs) != 1 {
		t.Fatalf("make release made %v in %s; output:\n%s", tarballs, dist, out)
	}
	name := strings.TrimSuffix(filepath.Base(tarballs[0]), ".tar.gz")
	version := strings.TrimPrefix(name, "willi-")
	t.Logf("make release: %s", tarballs[0])
	// The version: the tag (v1.2.3, v1.2.3-4-gabcdef0) or v0.0.0-<commit>.
	if !regexp.MustCompile(`^v\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$`).MatchString(version) {
		t.Errorf("release version %q is not vX.Y.Z[-...]", version)
	}
	if desc, err := deployRun(t, time.Minute, nil, "git", "describe", "--tags"); err == nil {
		if strings.TrimSpace(desc) != version {
			t.Errorf("release version %q, git describe --tags says %q", version, strings.TrimSpace(desc))
		}
	} else if sha, err := deployRun(t, time.Minute, nil, "git", "rev-parse", "--short", "HEAD"); err == nil {
		if want := "v0.0.0-" + strings.TrimSpace(sha); version != want {
			t.Errorf("release version %q without a tag, want %q", version, want)
		}
	}

	// Contents: one top folder, every shipped file, root-owned, modes.
	f, err := os.Open(tarballs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	entries := map[string]deployTarEntry{}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(h.Name, name+"/") {
			t.Errorf("tarball member %q is outside the top folder %s/", h.Name, name)
		}
		entries[strings.TrimPrefix(strings.TrimSuffix(h.Name, "/"), name+"/")] = deployTarEntry{h.Mode & 0o7777, h.Uid, h.Gid, h.Typeflag}
	}
	wantModes := map[string]int64{"willi": 0o755, "install.sh": 0o755, "contrib/tcpserver/run": 0o755}
	for _, f := range append([]string{"willi"}, deployReleaseFiles...) {
		e, ok := entries[f]
		if !ok {
			t.Errorf("tarball lacks %s", f)
			continue
		}
		want, ok := wantModes[f]
		if !ok {
			want = 0o644
		}
		if e.mode != want || e.uid != 0 || e.gid != 0 || e.typ != tar.TypeReg {
			t.Errorf("tarball %s: mode %o uid %d gid %d type %c, want mode %o, root, regular file", f, e.mode, e.uid, e.gid, e.typ, want)
		}
	}

	// Unpacked, its install.sh installs into a scratch root; the installed
	// binary is static and reports the release's version.
	unpack := t.TempDir()
	deployMustRun(t, time.Minute, nil, "tar", "-xzf", tarballs[0], "-C", unpack)
	root := t.TempDir()
	deployInstall(t, filepath.Join(unpack, name), root)
	bin := filepath.Join(root, "opt/willi/bin/willi")
	got := deployMustRun(t, time.Minute, nil, bin, "version")
	if !strings.Contains(got, version) {
		t.Errorf("installed willi version says %q, want %q", got, version)
	}
	ef, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer ef.Close()
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("release binary is dynamically linked (CGO_ENABLED=0 expected)")
		}
	}
	// -trimpath: no build folder in the binary.
	if raw, err := os.ReadFile(bin); err == nil {
		if wd, _ := os.Getwd(); bytes.Contains(raw, []byte(wd+"/")) {
			t.Errorf("release binary contains the build path %s (want -trimpath)", wd)
		}
	}
}

func TestDeployMakeBuildStampsVersion(t *testing.T) {
	needProgram(t, "make")
	// A copy of the tree, so that ./willi of the work tree is left alone.
	dir := t.TempDir()
	deployMustRun(t, time.Minute, nil, "sh", "-c", `tar -cf - --exclude=./willi --exclude=./dist --exclude=./.git . | tar -xf - -C "$0"`, dir)
	cmd := exec.Command("make", "-s", "build", "VERSION=v7.7.7-stamp")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make build: %v\n%s", err, out)
	}
	out := deployMustRun(t, time.Minute, nil, filepath.Join(dir, "willi"), "version")
	if !strings.Contains(out, "v7.7.7-stamp") {
		t.Errorf("willi version after make build VERSION=v7.7.7-stamp: %q", out)
	}
	// make test runs the suite's own script, as the README says.
	n := exec.Command("make", "-n", "--no-print-directory", "test")
	n.Dir = dir
	if out, err := n.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "bash test/run.sh" {
		t.Errorf("make -n test: %v %q, want \"bash test/run.sh\"", err, out)
	}
}

// deployMessage sends one message from client@sender.test to rcpt and
// expects 250 for it and 221 for QUIT.
func deployMessage(t testing.TB, c *smtptest.Client, rcpt, subject string) {
	t.Helper()
	c.Expect(220)
	c.Want250("EHLO client.test", "MAIL FROM:<client@sender.test>", "RCPT TO:<"+rcpt+">")
	msg := "From: client@sender.test\r\nTo: " + rcpt + "\r\nSubject: " + subject + "\r\n\r\nHello.\r\n"
	if r := c.Data(smtptest.DotStuff([]byte(msg))); r.Code != 250 {
		t.Fatalf("end of data: %q", r.Lines)
	}
	if r := c.Cmd("QUIT"); r.Code != 221 {
		t.Fatalf("QUIT: %q", r.Lines)
	}
}

// deployRoutedConfig writes willi.conf and routes.csv into an open folder,
// routing example.com to the sink, and copies willi there: readable by
// nobody, who runs willi under xinetd and tcpserver here.
func deployRoutedConfig(t testing.TB, sinkAddr string) (bin, conf string) {
	t.Helper()
	dir := deployOpenDir(t)
	bin = filepath.Join(dir, "willi")
	deployCopy(t, buildWilli(t), bin)
	os.Chmod(bin, 0o755)
	if err := os.WriteFile(filepath.Join(dir, "routes.csv"), []byte("pattern,server\nexample.com,"+sinkAddr+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	conf = writeConfig(t, dir, "hostname = \"willi.test\"\n[[mapping]]\ntype = \"csv\"\nfile = \"routes.csv\"\n")
	return bin, conf
}

// deployXinetdConf turns the shipped xinetd.d/willi into a runnable service:
// enabled, on a free loopback port, as nobody, running bin with conf.
func deployXinetdConf(t testing.TB, bin, conf string, port int) string {
	t.Helper()
	src, err := os.ReadFile("contrib/xinetd/willi")
	if err != nil {
		t.Fatal(err)
	}
	set := func(s, key, value string) string {
		re := regexp.MustCompile(`(?m)^(\s*)` + key + `(\s*)=.*$`)
		if !re.MatchString(s) {
			t.Fatalf("shipped xinetd file has no %s", key)
		}
		return re.ReplaceAllString(s, "${1}"+key+"${2}= "+value)
	}
	s := string(src)
	for _, kv := range [][2]string{{"disable", "no"}, {"port", strconv.Itoa(port)},
		{"user", "nobody"}, {"group", deployGroup(t)}, {"server", bin},
		{"server_args", "-config " + conf}, {"flags", "REUSE"}, {"log_type", "FILE " + filepath.Join(filepath.Dir(conf), "xinetd.log")}} {
		s = set(s, kv[0], kv[1])
	}
	// Loopback only.
	s = strings.Replace(s, "\twait ", "\tbind            = 127.0.0.1\n\twait ", 1)
	for _, must := range []string{"wait            = no", "per_source", "instances"} {
		if !strings.Contains(s, must) {
			t.Fatalf("shipped xinetd file lacks %q", must)
		}
	}
	p := filepath.Join(filepath.Dir(conf), "xinetd.conf")
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDeployXinetd(t *testing.T) {
	needRoot(t)
	xinetd := needProgram(t, "xinetd")
	sink, dump := startSMTPSink(t)
	bin, conf := deployRoutedConfig(t, sink)
	port := smtptest.FreePort(t)
	xconf := deployXinetdConf(t, bin, conf, port)
	addr := fmt.Sprintf("127.0.0.1:%d", port)

	logPath := filepath.Join(filepath.Dir(conf), "xinetd.stderr")
	cmd := exec.Command(xinetd, "-dontfork", "-filelog", logPath, "-f", xconf, "-pidfile", filepath.Join(filepath.Dir(conf), "xinetd.pid"))
	startListener(t, cmd, "xinetd", logPath, addr, func() string {
		return fmt.Sprintf("xinetd config:\n%s\nxinetd log:\n%s\n", tailFile(xconf, 4<<10),
			tailFile(filepath.Join(filepath.Dir(conf), "xinetd.log"), 8<<10))
	})

	deployTwoMessages(t, addr, dump, "xinetd")
	// One process per connection: xinetd logged two starts and two exits.
	waitLogFile(t, filepath.Join(filepath.Dir(conf), "xinetd.log"), "two START and EXIT lines", func(log []byte) bool {
		return bytes.Count(log, []byte("EXIT: willi status=0")) >= 2 && bytes.Count(log, []byte("START: willi")) >= 2
	})
}

// deployTwoMessages sends two messages through addr, one connection each,
// and checks that the sink got both.
func deployTwoMessages(t *testing.T, addr, dump, via string) {
	t.Helper()
	for i := 0; i < 2; i++ {
		deployMessage(t, dialSMTP(t, addr, ""), "someone@example.com", fmt.Sprintf("via %s %d", via, i))
	}
	for i, m := range readSinkMessages(t, dump, 2, 20*time.Second) {
		if !bytes.Contains(m.Data, []byte("Subject: via "+via)) {
			t.Errorf("sink message %d is not ours:\n%s", i, m.Data)
		}
	}
}

// waitLogFile waits up to 10 s for the file at path to satisfy done.
func waitLogFile(t *testing.T, path, what string, done func(log []byte) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		log, _ := os.ReadFile(path)
		if done(log) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %s in:\n%s", path, what, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestDeployTCPServer(t *testing.T) {
	needRoot(t)
	needProgram(t, "tcpserver")
	sink, dump := startSMTPSink(t)
	bin, conf := deployRoutedConfig(t, sink)
	port := smtptest.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)

	logPath := filepath.Join(filepath.Dir(conf), "run.log")
	run, _ := filepath.Abs("contrib/tcpserver/run")
	cmd := exec.Command("sh", run)
	cmd.Env = append(os.Environ(), "WILLI_HOST=127.0.0.1", "WILLI_PORT="+strconv.Itoa(port),
		"WILLI_CONCURRENCY=5", "WILLI_USER=nobody", "WILLI_BIN="+bin, "WILLI_CONFIG="+conf,
		"WILLI_RULES="+filepath.Join(filepath.Dir(conf), "no-rules.cdb"))
	startListener(t, cmd, "tcpserver run script", logPath, addr, nil)

	deployTwoMessages(t, addr, dump, "tcpserver")
	// tcpserver -v logs each child: "tcpserver: end PID status 0".
	ended := regexp.MustCompile(`tcpserver: end \d+ status 0`)
	waitLogFile(t, logPath, "two children ending with status 0", func(log []byte) bool {
		return len(ended.FindAll(log, -1)) >= 2
	})
}

// TestDeployDemo runs the README's first command, on free ports.
func TestDeployDemo(t *testing.T) {
	needRoot(t)
	needProgram(t, "smtp-sink")
	needProgram(t, "swaks")
	// demo.sh builds ./willi when there is none; build a copy of the tree so
	// that the work tree is left alone.
	dir := t.TempDir()
	deployMustRun(t, time.Minute, nil, "sh", "-c", `tar -cf - --exclude=./willi --exclude=./dist --exclude=./.git . | tar -xf - -C "$0"`, dir)
	env := []string{fmt.Sprintf("DEMO_LISTEN=127.0.0.1:%d", smtptest.FreePort(t)), fmt.Sprintf("DEMO_SINK_PORT=%d", smtptest.FreePort(t))}
	out, err := deployRun(t, 5*time.Minute, env, "bash", filepath.Join(dir, "demo.sh"))
	if err != nil || !strings.Contains(out, "done: the message went") || !strings.Contains(out, "Routed by willi.") {
		t.Fatalf("demo.sh: %v\n%s", err, out)
	}
	left, _ := filepath.Glob("/tmp/willi-demo.*")
	for _, d := range left {
		if fi, err := os.Stat(d); err == nil && time.Since(fi.ModTime()) < time.Minute {
			t.Errorf("demo.sh left its temp folder %s", d)
		}
	}
}

// TestDeployMakeInstallRemote runs make install TARGET_HOST=... with scp
// and ssh stand-ins that act on a scratch "remote" folder: the release is
// copied to the host's /tmp, unpacked there, installed by its install.sh
// (into a scratch root, by DESTDIR) and the copy removed.
func TestDeployMakeInstallRemote(t *testing.T) {
	needRoot(t)
	needProgram(t, "make")
	needProgram(t, "git")
	dir, remote, root, dist := t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir()
	if err := os.MkdirAll(filepath.Join(remote, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	calls := filepath.Join(dir, "calls")
	for name, script := range map[string]string{
		// scp FILE HOST:PATH copies FILE to PATH under the remote folder.
		"scp": `echo "scp $*" >>"$FAKE_CALLS"; cp "$1" "$FAKE_REMOTE${2#*:}"`,
		// ssh HOST COMMAND runs COMMAND with the host's /tmp in the remote folder.
		"ssh": `echo "ssh $1" >>"$FAKE_CALLS"; sh -c "$(printf '%s' "$2" | sed "s#/tmp/#$FAKE_REMOTE/tmp/#g")"`,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\nset -e\n"+script+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	env := []string{"FAKE_CALLS=" + calls, "FAKE_REMOTE=" + remote, "DESTDIR=" + root}
	out := deployMustRun(t, 5*time.Minute, env, "make", "-s", "install", "TARGET_HOST=mx.example",
		"SSH="+filepath.Join(dir, "ssh"), "SCP="+filepath.Join(dir, "scp"), "DIST="+dist)
	log, _ := os.ReadFile(calls)
	if !regexp.MustCompile(`(?m)^scp \S+/willi-v\S+\.tar\.gz mx\.example:/tmp/willi-v\S+\.tar\.gz\n^ssh mx\.example$`).Match(log) {
		t.Errorf("scp and ssh calls:\n%s", log)
	}
	got := deployMustRun(t, time.Minute, nil, filepath.Join(root, "opt/willi/bin/willi"), "version")
	if !strings.HasPrefix(got, "willi v") {
		t.Errorf("installed willi version: %q\nmake output:\n%s", got, out)
	}
	if left, _ := filepath.Glob(filepath.Join(remote, "tmp", "*")); len(left) != 0 {
		t.Errorf("left on the host's /tmp: %v", left)
	}
}
