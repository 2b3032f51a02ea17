package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// A real MariaDB for the mysql mapping's tests: a data directory made by
// mariadb-install-db in a temporary folder, mariadbd on a free loopback
// port, a real user with a password, the routes schema and rows.

const (
	mariaUser   = "willi"
	mariaPasswd = "Rt7-pw_long-Secret-42"
)

type mariaDB struct {
	addr   string // 127.0.0.1:port
	socket string
	stop   io.Closer // closing it stops mariadbd and removes its folder
	done   chan struct{}
}

// DSN for the willi user, with extra DSN parameters.
func (db *mariaDB) DSN(params string) string {
	dsn := fmt.Sprintf("%s:%s@tcp(%s)/mail", mariaUser, mariaPasswd, db.addr)
	if params != "" {
		dsn += "?" + params
	}
	return dsn
}

var (
	sharedMariaOnce sync.Once
	sharedMaria     *mariaDB
	sharedMariaErr  error
)

// sharedMariaDB starts one server for the whole test run. It needs no
// TestMain: the server's watchdog shell stops it and deletes its folder
// when the test binary exits and its stdin pipe closes.
func sharedMariaDB(t testing.TB) *mariaDB {
	t.Helper()
	sharedMariaOnce.Do(func() { sharedMaria, sharedMariaErr = startMariaDB() })
	if sharedMariaErr != nil {
		t.Fatalf("MariaDB (Debian package mariadb-server) is needed: %v", sharedMariaErr)
	}
	return sharedMaria
}

// ownMariaDB starts a server for one test (one that stops it).
func ownMariaDB(t testing.TB) *mariaDB {
	t.Helper()
	db, err := startMariaDB()
	if err != nil {
		t.Fatalf("MariaDB (Debian package mariadb-server) is needed: %v", err)
	}
	t.Cleanup(func() { db.Stop() })
	return db
}

// Stop stops mariadbd and waits until it is gone.
func (db *mariaDB) Stop() {
	db.stop.Close()
	select {
	case <-db.done:
	case <-time.After(20 * time.Second):
	}
}

const mariaWatchdog = `
set -e
dir=$1 port=$2
mariadb-install-db --no-defaults --datadir="$dir/data" --user=root \
	--auth-root-authentication-method=normal --skip-test-db --skip-name-resolve \
	--innodb-log-file-size=4M --innodb-buffer-pool-size=16M \
	--innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0 --innodb-flush-method=nosync \
	>"$dir/install.log" 2>&1 || { cat "$dir/install.log" >&2; rm -rf "$dir"; exit 1; }
mariadbd --no-defaults --datadir="$dir/data" --user=root --skip-name-resolve \
	--bind-address=127.0.0.1 --port="$port" --socket="$dir/sock" --pid-file="$dir/pid" \
	--log-error="$dir/error.log" --skip-log-bin \
	--innodb-log-file-size=4M --innodb-buffer-pool-size=16M \
	--innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0 --innodb-flush-method=nosync \
	2>>"$dir/error.log" &
pid=$!
cat >/dev/null || true  # until the test process closes our stdin (or exits)
kill -9 $pid 2>/dev/null || true
wait $pid 2>/dev/null || true
rm -rf "$dir"
`

func startMariaDB() (*mariaDB, error) {
	for _, prog := range []string{"mariadb-install-db", "mariadbd"} {
		if _, err := exec.LookPath(prog); err != nil {
			return nil, err
		}
	}
	dir, err := os.MkdirTemp("", "willi-mariadb-")
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()

	cmd := exec.Command("sh", "-c", mariaWatchdog, "sh", dir, fmt.Sprint(port))
	cmd.Env = append(os.Environ(), "PATH="+os.Getenv("PATH")+":/usr/sbin:/sbin")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	db := &mariaDB{addr: fmt.Sprintf("127.0.0.1:%d", port), socket: filepath.Join(dir, "sock"), stop: stdin, done: make(chan struct{})}
	go func() { cmd.Wait(); close(db.done) }()

	root, err := sql.Open("mysql", "root@unix("+db.socket+")/")
	if err != nil {
		db.Stop()
		return nil, err
	}
	defer root.Close()
	deadline := time.Now().Add(40 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err = root.PingContext(ctx)
		cancel()
		if err == nil {
			break
		}
		select {
		case <-db.done:
			return nil, fmt.Errorf("mariadbd did not start: %s", stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			db.Stop()
			return nil, fmt.Errorf("mariadbd not ready: %v %s %s", err, stderr.String(), log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, q := range []string{
		"CREATE DATABASE mail",
		fmt.Sprintf("CREATE USER '%s'@'%%' IDENTIFIED BY '%s'", mariaUser, mariaPasswd),
		fmt.Sprintf("GRANT SELECT ON mail.* TO '%s'@'%%'", mariaUser),
		"CREATE TABLE mail.routes (pattern VARCHAR(320) NOT NULL PRIMARY KEY, server VARCHAR(1024) NOT NULL)",
		`INSERT INTO mail.routes VALUES
			('alice@example.com', 'alice-mx.internal:2525'),
			('example.com', 'mx1.internal:25 mx2.internal:25'),
			('.example.org', '[::1]:2525'),
			('empty.example', ''),
			('spaces.example', '   ')`,
		// For NULL answers and duplicate rows, which routes forbids.
		"CREATE TABLE mail.loose (pattern VARCHAR(320) NOT NULL, server VARCHAR(1024) NULL)",
		`INSERT INTO mail.loose VALUES ('null.example', NULL), ('dup.example', 'first.internal'), ('dup.example', 'second.internal')`,
	} {
		if _, err := root.Exec(q); err != nil {
			db.Stop()
			return nil, fmt.Errorf("%s: %v", q, err)
		}
	}
	return db, nil
}
