// Package mariadb runs a real MariaDB server for tests: a data directory made
// by mariadb-install-db in a temporary folder, mariadbd on a free loopback
// port, a real user with a password, the routes schema and rows. The mysql
// mapping's in-process tests and the black-box tests in test/ share it.
package mariadb

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

	_ "github.com/go-sql-driver/mysql" // the "mysql" database/sql driver
)

// The user the tests' willi connects as, and its password.
const (
	User     = "willi"
	Password = "Rt7-pw_long-Secret-42"
)

// DB is a running server (or, with only Addr set, the address of one).
type DB struct {
	Addr   string    // 127.0.0.1:port
	Socket string    // the Unix socket root connects on
	stop   io.Closer // closing it stops mariadbd and removes its folder
	done   chan struct{}
}

// DSN for the willi user, with extra DSN parameters.
func (db *DB) DSN(params string) string {
	dsn := fmt.Sprintf("%s:%s@tcp(%s)/mail", User, Password, db.Addr)
	if params != "" {
		dsn += "?" + params
	}
	return dsn
}

var (
	sharedOnce sync.Once
	shared     *DB
	sharedErr  error
)

// Shared starts one server for the whole test run. It needs no TestMain:
// the server's watchdog shell stops it and deletes its folder when the test
// binary exits and its stdin pipe closes.
func Shared(t testing.TB) *DB {
	t.Helper()
	sharedOnce.Do(func() { shared, sharedErr = Start() })
	if sharedErr != nil {
		t.Fatalf("MariaDB (Debian package mariadb-server) is needed: %v", sharedErr)
	}
	return shared
}

// Own starts a server for one test (one that stops it).
func Own(t testing.TB) *DB {
	t.Helper()
	db, err := Start()
	if err != nil {
		t.Fatalf("MariaDB (Debian package mariadb-server) is needed: %v", err)
	}
	t.Cleanup(func() { db.Stop() })
	return db
}

// Done is closed when the watchdog shell has exited.
func (db *DB) Done() <-chan struct{} { return db.done }

// Stop stops mariadbd and waits until it is gone.
func (db *DB) Stop() {
	db.stop.Close()
	select {
	case <-db.done:
	case <-time.After(20 * time.Second):
	}
}

// watchdog runs mariadbd until its stdin closes, then kills it and removes
// its folder.
const watchdog = `
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
` + WatchdogEnd

// WatchdogEnd ends a watchdog shell that has just started a server in the
// background in its folder $dir: it waits until the test closes the shell's
// standard input (or exits), then kills the server (SIGKILL: a host that
// dies) and removes the folder.
const WatchdogEnd = `pid=$!
cat >/dev/null || true  # until the test process closes our stdin (or exits)
kill -9 $pid 2>/dev/null || true
wait $pid 2>/dev/null || true
rm -rf "$dir"
`

// Watch starts cmd, a watchdog shell that runs a server on addr and socket
// until its standard input closes; Stop closes it.
func Watch(cmd *exec.Cmd, addr, socket string) (*DB, error) {
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	db := &DB{Addr: addr, Socket: socket, stop: stdin, done: make(chan struct{})}
	go func() { cmd.Wait(); close(db.done) }()
	return db, nil
}

// Start starts a server with the willi user, the database mail and its
// tables routes and loose.
func Start() (*DB, error) {
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

	cmd := exec.Command("sh", "-c", watchdog, "sh", dir, fmt.Sprint(port))
	cmd.Env = append(os.Environ(), "PATH="+os.Getenv("PATH")+":/usr/sbin:/sbin")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	db, err := Watch(cmd, fmt.Sprintf("127.0.0.1:%d", port), filepath.Join(dir, "sock"))
	if err != nil {
		return nil, err
	}

	root, err := sql.Open("mysql", "root@unix("+db.Socket+")/")
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
		fmt.Sprintf("CREATE USER '%s'@'%%' IDENTIFIED BY '%s'", User, Password),
		fmt.Sprintf("GRANT SELECT ON mail.* TO '%s'@'%%'", User),
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
