package test

// Scaling out with the routing table in a Galera cluster: three MariaDB
// Galera nodes (Debian mariadb-server with its galera-4 provider) on
// loopback, HAProxy in front of them as the one address the willi hosts'
// DSN names, and the two willi hosts behind the README's HAProxy. A
// database host killed mid-run does not take the routing table with it.

import (
	"willi/internal/smtptest"
	"willi/test/mariadb"

	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const galeraProvider = "/usr/lib/galera/libgalera_smm.so"

// galeraWatchdog runs one Galera node and, like the mariadb package's
// watchdog (mariadb.WatchdogEnd), kills it and removes its folder when its
// stdin closes. The first node bootstraps the cluster from a fresh data
// directory; the others start empty and get their state by rsync SST, whose
// daemon runs as nobody.
const galeraWatchdog = `
set -e
dir=$1 port=$2 gport=$3 iport=$4 sport=$5 peers=$6 name=$7
chmod 755 "$dir"
mkdir -p "$dir/data"
if [ -z "$peers" ]; then
	mariadb-install-db --no-defaults --datadir="$dir/data" --user=root \
		--auth-root-authentication-method=normal --skip-test-db --skip-name-resolve \
		>"$dir/install.log" 2>&1 || { cat "$dir/install.log" >&2; rm -rf "$dir"; exit 1; }
else
	chown nobody:nogroup "$dir/data"
fi
mariadbd --no-defaults --datadir="$dir/data" --user=root --skip-name-resolve \
	--bind-address=127.0.0.1 --port="$port" --socket="$dir/sock" --pid-file="$dir/pid" \
	--log-error="$dir/error.log" --max-connect-errors=1000000 \
	--innodb-log-file-size=4M --innodb-buffer-pool-size=16M \
	--innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0 \
	--binlog-format=ROW --default-storage-engine=InnoDB --innodb-autoinc-lock-mode=2 \
	--wsrep-on=ON --wsrep-provider=` + galeraProvider + ` --wsrep-cluster-name=willi-test \
	--wsrep-cluster-address="gcomm://$peers" --wsrep-node-address=127.0.0.1 --wsrep-node-name="$name" \
	--wsrep-provider-options="gmcast.listen_addr=tcp://127.0.0.1:$gport;ist.recv_addr=127.0.0.1:$iport;gcache.size=8M" \
	--wsrep-sst-method=rsync --wsrep-sst-receive-address="127.0.0.1:$sport" \
	2>>"$dir/error.log" &
` + mariadb.WatchdogEnd

// startGaleraCluster starts n Galera nodes, one after the other, each
// joining the ones before, and waits until each is Synced. The first node
// gets the willi user and the database "mail", which replicate.
func startGaleraCluster(t testing.TB, n int) []*mariadb.DB {
	t.Helper()
	for _, prog := range []string{"mariadb-install-db", "mariadbd", "rsync"} {
		if _, err := exec.LookPath(prog); err != nil {
			if _, err := os.Stat("/usr/sbin/" + prog); err != nil {
				t.Fatalf("%s is needed for the Galera test (Debian mariadb-server and its dependencies): %v", prog, err)
			}
		}
	}
	if _, err := os.Stat(galeraProvider); err != nil {
		t.Fatalf("the Galera provider (Debian galera-4, a dependency of mariadb-server) is needed: %v", err)
	}
	var nodes []*mariadb.DB
	var gcomm []string
	for i := 0; i < n; i++ {
		dir, err := os.MkdirTemp("", "willi-galera-")
		if err != nil {
			t.Fatal(err)
		}
		port, gport, iport, sport := smtptest.FreePort(t), smtptest.FreePort(t), smtptest.FreePort(t), smtptest.FreePort(t)
		name := fmt.Sprintf("db%d", i+1)
		cmd := exec.Command("sh", "-c", galeraWatchdog, "sh", dir, fmt.Sprint(port), fmt.Sprint(gport),
			fmt.Sprint(iport), fmt.Sprint(sport), strings.Join(gcomm, ","), name)
		cmd.Env = append(os.Environ(), "PATH="+os.Getenv("PATH")+":/usr/sbin:/sbin")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		db, err := mariadb.Watch(cmd, fmt.Sprintf("127.0.0.1:%d", port), filepath.Join(dir, "sock"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(db.Stop)
		if err := galeraWaitSynced(db, 120*time.Second); err != nil {
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			if len(log) > 16<<10 {
				log = log[len(log)-16<<10:]
			}
			t.Fatalf("Galera node %s did not reach Synced: %v\n%s\n%s", name, err, stderr.String(), log)
		}
		nodes = append(nodes, db)
		gcomm = append(gcomm, fmt.Sprintf("127.0.0.1:%d", gport))
	}
	root, err := galeraRoot(nodes[0])
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	for _, q := range []string{
		"CREATE DATABASE IF NOT EXISTS mail",
		fmt.Sprintf("CREATE USER '%s'@'%%' IDENTIFIED BY '%s'", mariadb.User, mariadb.Password),
		fmt.Sprintf("GRANT SELECT ON mail.* TO '%s'@'%%'", mariadb.User),
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		_, err := root.ExecContext(ctx, q)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	return nodes
}

// galeraRoot connects as root without a default database (pmRoot's "mail"
// does not exist yet while the cluster forms).
func galeraRoot(db *mariadb.DB) (*sql.DB, error) {
	root, err := sql.Open("mysql", "root@unix("+db.Socket+")/")
	if err != nil {
		return nil, err
	}
	root.SetMaxOpenConns(1)
	return root, nil
}

// galeraWaitSynced waits until the node answers and reports itself Synced
// in a primary component.
func galeraWaitSynced(db *mariadb.DB, timeout time.Duration) error {
	root, err := galeraRoot(db)
	if err != nil {
		return err
	}
	defer root.Close()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		var name, state, status string
		err = root.QueryRowContext(ctx, "SHOW STATUS LIKE 'wsrep_local_state_comment'").Scan(&name, &state)
		if err == nil {
			err = root.QueryRowContext(ctx, "SHOW STATUS LIKE 'wsrep_cluster_status'").Scan(&name, &status)
		}
		cancel()
		if err == nil && state == "Synced" && status == "Primary" {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("state %s, cluster %s", state, status)
		}
		select {
		case <-db.Done():
			return fmt.Errorf("mariadbd exited (last: %v)", err)
		default:
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// galeraWaitRow waits until the node's copy of table answers pattern with
// server (replication is synchronous for commits, but a node applies them
// in the background).
func galeraWaitRow(t testing.TB, db *mariadb.DB, table, pattern, server string) {
	t.Helper()
	root := pmRoot(t, db)
	defer root.Close()
	deadline := time.Now().Add(60 * time.Second)
	var got string
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := root.QueryRowContext(ctx, "SELECT server FROM "+table+" WHERE pattern = ?", pattern).Scan(&got)
		cancel()
		if err == nil && got == server {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s: %s has %s -> %q (%v), want %q", db.Addr, table, pattern, got, err, server)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// galeraHAProxyConfig is the README's HAProxy configuration for the DSN
// (the "listen galera" block of its Scaling out section) with loopback
// addresses: the frontend on front, db1..db3 on the nodes.
func galeraHAProxyConfig(t testing.TB, front string, nodes []*mariadb.DB) string {
	t.Helper()
	block := soReadmeBlock(t, soReadmeScalingOut(t), "listen galera")
	pairs := []string{"bind 127.0.0.1:3306", "bind " + front}
	for i, n := range nodes {
		old := fmt.Sprintf(" 10.0.0.2%d:3306 ", i+1)
		if !strings.Contains(block, old) {
			t.Fatalf("README's Galera HAProxy config lacks %q (the test substitutes a loopback address for it):\n%s", old, block)
		}
		pairs = append(pairs, old, " "+n.Addr+" ")
	}
	if !strings.Contains(block, pairs[0]) {
		t.Fatalf("README's Galera HAProxy config lacks %q:\n%s", pairs[0], block)
	}
	return strings.NewReplacer(pairs...).Replace(block)
}

// TestPeerScaleOutGalera: the two willi hosts behind the README's HAProxy
// route from a table in a three-node Galera cluster reached through
// HAProxy running the README's configuration for it. The table written on one node routes on every host; when the
// node serving the queries is killed, the surviving two keep the table:
// a change written on one of them routes the next sessions, and no message
// ever reaches the wrong sink.
func TestPeerScaleOutGalera(t *testing.T) {
	needRoot(t)
	bin := buildWilli(t)
	nodes := startGaleraCluster(t, 3)
	sinkA := pmStartSink(t, "A")
	sinkB := pmStartSink(t, "B")
	table := pmRoutesTable(t, nodes[0], [][2]string{
		{"alice@example.com", sinkA.Addr},
		{"example.com", sinkB.Addr},
	})
	for _, n := range nodes[1:] {
		galeraWaitRow(t, n, table, "example.com", sinkB.Addr)
	}
	query := "SELECT server FROM " + table + " WHERE pattern = ?"

	dbFront := fmt.Sprintf("127.0.0.1:%d", smtptest.FreePort(t))
	startHAProxyConfig(t, galeraHAProxyConfig(t, dbFront, nodes), dbFront)
	dsn := (&mariadb.DB{Addr: dbFront}).DSN("timeout=5s&readTimeout=10s")
	hosts, addrs := soWilliHosts(t, bin, dsn, query)
	front := fmt.Sprintf("127.0.0.1:%d", smtptest.FreePort(t))
	hcfg, _ := soReadmeHAProxyConfig(t, front, addrs[0], addrs[1])
	startHAProxyConfig(t, hcfg, front)

	want := map[pmSink]int{sinkA: 0, sinkB: 0}
	seen := map[string]bool{}
	send := func(i int, rcpt string, sink pmSink) {
		t.Helper()
		token := fmt.Sprintf("galera-%d", i)
		res := pmSession(t, front, []string{rcpt}, token)
		seen[strings.Fields(res.Banner.Lines[0])[1]] = true
		if len(res.Rcpt) != 1 || res.Rcpt[0].Code != 250 || res.Data == nil || res.Data.Code != 250 {
			t.Fatalf("session %d (%s): RCPT %q, end of data %+v", i, rcpt, res.Rcpt, res.Data)
		}
		pmSinkHas(t, sink, token)
		want[sink]++
	}
	for i := 0; i < 4; i++ {
		send(i, "alice@example.com", sinkA)
		send(10+i, "bob@example.com", sinkB)
	}
	if !seen["mx1.test"] || !seen["mx2.test"] {
		t.Errorf("the sessions did not reach both willi hosts: %v", seen)
	}
	pmExpectCounts(t, want)

	// The database host serving the queries dies.
	nodes[0].Stop()
	for _, n := range nodes[1:] {
		if err := galeraWaitSynced(n, 120*time.Second); err != nil {
			t.Fatalf("node %s after the loss of db1: %v", n.Addr, err)
		}
	}
	// example.com moves to sink A, written on a surviving node.
	root := pmRoot(t, nodes[2])
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	_, err := root.ExecContext(ctx, "UPDATE "+table+" SET server = ? WHERE pattern = 'example.com'", sinkA.Addr)
	cancel()
	root.Close()
	if err != nil {
		t.Fatalf("updating the table on a surviving node: %v", err)
	}
	galeraWaitRow(t, nodes[1], table, "example.com", sinkA.Addr)

	// Sessions until one is routed (HAProxy may still try the dead node
	// first, which willi answers with a 4xx: the client retries); from then
	// on every session is routed by the survivors, to the new route.
	var deferred int
	for i := 0; ; i++ {
		token := fmt.Sprintf("galera-after-%d", i)
		res := pmSession(t, front, []string{"bob@example.com"}, token)
		if len(res.Rcpt) == 1 && res.Rcpt[0].Code/100 == 4 && i < 30 {
			deferred++
			t.Logf("session %d after the node loss deferred: %q", i, res.Rcpt[0].Lines)
			time.Sleep(time.Second)
			continue
		}
		if len(res.Rcpt) != 1 || res.Rcpt[0].Code != 250 || res.Data == nil || res.Data.Code != 250 {
			t.Fatalf("session %d after the node loss: RCPT %q, end of data %+v", i, res.Rcpt, res.Data)
		}
		pmSinkHas(t, sinkA, token)
		want[sinkA]++
		break
	}
	seen = map[string]bool{}
	for i := 0; i < 6; i++ {
		send(100+i, "carol@example.com", sinkA)
	}
	if !seen["mx1.test"] || !seen["mx2.test"] {
		t.Errorf("after the node loss, the sessions did not reach both willi hosts: %v", seen)
	}
	pmExpectCounts(t, want)
	t.Logf("%d session(s) deferred while HAProxy noticed the dead node", deferred)

	for name, w := range hosts {
		pmNoPassword(t, "willi's log on "+name, tailFile(w.StderrPath, 4<<20))
	}
}
