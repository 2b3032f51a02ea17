package test

import (
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// TestProbe: `willi probe` connects to each upstream as a session would
// and says whether it is fit. Against real Postfix upstreams: one that
// authorises willi's XCLIENT and offers STARTTLS is fit (exit 0), one
// that does not authorise XCLIENT is unfit (exit 1: it would see only
// willi's address); an address is probed through its route; a server that
// is down is unfit.
func TestProbe(t *testing.T) {
	bin := buildWilli(t)
	good := startPostfix(t, postfixOpts{XClient: true, TLS: true})
	bad := startPostfix(t, postfixOpts{})
	down := fmt.Sprintf("127.0.0.1:%d", deadPort(t))
	conf := writeConfig(t, t.TempDir(), `hostname = "mx.test"
[[mapping]]
type = "static"
server = "`+good.Addr+`"
[[upstream]]
server = "`+good.Addr+`"
starttls = "required"
`)
	probe := func(args ...string) (string, int) {
		t.Helper()
		out, err := exec.Command(bin, append([]string{"probe", "-config", conf}, args...)...).CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code
	}
	check := func(out string, patterns ...string) {
		t.Helper()
		for _, p := range patterns {
			if !regexp.MustCompile(`(?m)` + p).MatchString(out) {
				t.Errorf("output lacks %q:\n%s", p, out)
			}
		}
	}

	// No argument: every server the config names (the static route, with
	// its [[upstream]] policy).
	out, code := probe()
	if code != 0 {
		t.Errorf("exit %d for a fit upstream:\n%s", code, out)
	}
	check(out, `^`+regexp.QuoteMeta(good.Addr)+` \(starttls required`, `banner: upstream.test ESMTP`,
		`extensions: .*PIPELINING`, `tls: TLS 1\.3`, `certificate: subject "upstream.test"`,
		`verification: fails`, `client address: XCLIENT accepted`, `^  fit$`)

	// An address, probed through its route.
	out, code = probe("alice@example.org")
	if code != 0 || !strings.Contains(out, good.Addr) {
		t.Errorf("exit %d probing an address:\n%s", code, out)
	}

	// A server that refuses XCLIENT from this host.
	out, code = probe(bad.Addr)
	if code != 1 {
		t.Errorf("exit %d for an upstream that refuses XCLIENT, want 1:\n%s", code, out)
	}
	check(out, `client address: XCLIENT (refused|not-offered)`, `^  unfit$`)

	// Down.
	out, code = probe(down)
	if code != 1 {
		t.Errorf("exit %d for a server that is down, want 1:\n%s", code, out)
	}
	check(out, `unfit: 451 4\.4\.1`)
}
