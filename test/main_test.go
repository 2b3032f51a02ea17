// Package test holds the black-box tests: they build willi once from the
// repository root (CGO_ENABLED=0, see buildWilli) and drive the binary only
// through its sockets, pipes, files and command line, against real peers
// (Postfix, smtp-sink, MariaDB, Galera, HAProxy, xinetd, tcpserver,
// systemd-socket-activate, swaks, Python's smtplib) and the project's
// install, release and deployment files.
package test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// TestMain runs the tests from the repository root, where the paths they
// name are (install.sh, testdata/, bench/, etc/, the go build of "."), and
// removes the built binary at the end.
func TestMain(m *testing.M) {
	if err := os.Chdir(".."); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if _, err := os.Stat("go.mod"); err != nil {
		fmt.Fprintln(os.Stderr, "the black-box tests run in the test folder of the repository (go test ./test/)")
		os.Exit(2)
	}
	code := m.Run()
	if williBinPath != "" {
		os.RemoveAll(filepath.Dir(williBinPath))
	}
	os.Exit(code)
}
