package main

import (
	"context"
	"errors"
)

// mysqlMapping is a placeholder until the MySQL mapping lands.
type mysqlMapping struct{ dsn, query string }

func newMySQLMapping(dsn, query string) (Mapping, error) { return &mysqlMapping{dsn, query}, nil }

func (m *mysqlMapping) Lookup(ctx context.Context, keys []string) (string, string, error) {
	return "", "", errors.New("mysql mapping not implemented")
}
func (m *mysqlMapping) Check(ctx context.Context) ([]string, error) {
	return nil, errors.New("not implemented")
}
func (m *mysqlMapping) Close() error   { return nil }
func (m *mysqlMapping) String() string { return "mysql" }
