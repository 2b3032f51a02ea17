package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
)

// Timeouts applied when the DSN sets none (timeout=, readTimeout=,
// writeTimeout=): a stuck database must cost a recipient a 4xx within
// seconds, not hang the session.
const (
	mysqlDefaultConnectTimeout = 5 * time.Second
	mysqlDefaultReadTimeout    = 5 * time.Second
	mysqlDefaultWriteTimeout   = 5 * time.Second
)

// mysqlMapping asks a MySQL/MariaDB query for each key. A process serves
// one connection, so it holds at most one database connection, opened at
// the first lookup, and prepares the query once for all its lookups.
type mysqlMapping struct {
	cfg    *mysql.Config
	query  string
	passwd string // only to scrub it from error texts
	name   string

	db   *sql.DB
	stmt *sql.Stmt
}

func newMySQLMapping(dsn, query string) (Mapping, error) {
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		return nil, errors.New(scrubPassword("mysql dsn: "+err.Error(), dsnPassword(dsn)))
	}
	if strings.Count(query, "?") != 1 {
		return nil, errors.New("mysql query must have exactly one ? for the key")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = mysqlDefaultConnectTimeout
	}
	if cfg.ReadTimeout == 0 {
		cfg.ReadTimeout = mysqlDefaultReadTimeout
	}
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = mysqlDefaultWriteTimeout
	}
	// The key goes to the server as a parameter of a server-side prepared
	// statement, never spliced into the SQL text.
	cfg.InterpolateParams = false
	m := &mysqlMapping{cfg: cfg, query: query, passwd: cfg.Passwd}
	// The driver logs to standard error by default, which under inetd is
	// the client's connection: route it to the process's logger.
	cfg.Logger = driverLogger{m}
	m.name = fmt.Sprintf("mysql:%s@%s(%s)/%s", cfg.User, cfg.Net, cfg.Addr, cfg.DBName)
	return m, nil
}

func (m *mysqlMapping) String() string { return m.name }

// open connects (lazily, once) and prepares the query.
func (m *mysqlMapping) open(ctx context.Context) error {
	if m.stmt != nil {
		return nil
	}
	if m.db == nil {
		conn, err := mysql.NewConnector(m.cfg)
		if err != nil {
			return m.scrubPassword(err)
		}
		m.db = sql.OpenDB(conn)
		m.db.SetMaxOpenConns(1)
		m.db.SetMaxIdleConns(1)
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout+m.cfg.ReadTimeout)
	defer cancel()
	stmt, err := m.db.PrepareContext(ctx, m.query)
	if err != nil {
		return m.scrubPassword(err)
	}
	m.stmt = stmt
	return nil
}

// Lookup runs the prepared query for each key in turn; the first key with a
// non-empty answer wins. Any error ends the lookup: the caller must not
// fall through to another mapping.
func (m *mysqlMapping) Lookup(ctx context.Context, keys []string) (string, string, error) {
	if err := m.open(ctx); err != nil {
		return "", "", err
	}
	for _, k := range keys {
		server, err := m.lookup1(ctx, k)
		if err != nil {
			return "", "", m.scrubPassword(err)
		}
		if server != "" {
			return k, server, nil
		}
	}
	return "", "", nil
}

// lookup1 returns the first column of the first row, "" for no row, NULL
// or an empty string.
func (m *mysqlMapping) lookup1(ctx context.Context, key string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.ReadTimeout)
	defer cancel()
	rows, err := m.stmt.QueryContext(ctx, key)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	if !rows.Next() {
		return "", rows.Err()
	}
	cols, err := rows.Columns()
	if err != nil {
		return "", err
	}
	var server sql.NullString
	dest := make([]any, len(cols))
	dest[0] = &server
	for i := 1; i < len(dest); i++ {
		dest[i] = new(sql.RawBytes)
	}
	if err := rows.Scan(dest...); err != nil {
		return "", err
	}
	if rows.Next() {
		slog.Default().Debug("mysql query returned more than one row; using the first", "mapping", m.name, "key", key)
	}
	if err := rows.Err(); err != nil {
		return "", err
	}
	return strings.TrimSpace(server.String), nil
}

// Check connects, pings and prepares the query.
func (m *mysqlMapping) Check(ctx context.Context) ([]string, error) {
	if err := m.open(ctx); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.ReadTimeout)
	defer cancel()
	if err := m.db.PingContext(ctx); err != nil {
		return nil, m.scrubPassword(err)
	}
	return nil, nil
}

func (m *mysqlMapping) Close() error {
	var errs []error
	if m.stmt != nil {
		errs = append(errs, m.stmt.Close())
		m.stmt = nil
	}
	if m.db != nil {
		errs = append(errs, m.db.Close())
		m.db = nil
	}
	return m.scrubPassword(errors.Join(errs...))
}

// scrub keeps the DSN's password out of an error text, whatever layer
// wrote it.
func (m *mysqlMapping) scrubPassword(err error) error {
	if err == nil || m.passwd == "" || !strings.Contains(err.Error(), m.passwd) {
		return err
	}
	return errors.New(scrubPassword(err.Error(), m.passwd))
}

func scrubPassword(s, passwd string) string {
	if passwd == "" {
		return s
	}
	return strings.ReplaceAll(s, passwd, "xxxxx")
}

// dsnPassword finds the password the way ParseDSN does
// (user:password@net(addr)/db), for scrubbing a DSN it rejected.
func dsnPassword(dsn string) string {
	if i := strings.LastIndexByte(dsn, '/'); i >= 0 {
		dsn = dsn[:i]
	}
	at := strings.LastIndexByte(dsn, '@')
	if at < 0 {
		return ""
	}
	if c := strings.IndexByte(dsn[:at], ':'); c >= 0 {
		return dsn[c+1 : at]
	}
	return ""
}

// driverLogger sends the driver's own messages to slog, scrubbed.
type driverLogger struct{ m *mysqlMapping }

func (l driverLogger) Print(v ...any) {
	slog.Default().Warn(scrubPassword(strings.TrimSpace(fmt.Sprint(v...)), l.m.passwd), "mapping", l.m.name)
}
