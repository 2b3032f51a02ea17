package main

import (
	"context"
	"errors"
)

// csvMapping is a placeholder until the CSV mapping lands.
type csvMapping struct{ file string }

func newCSVMapping(file string) Mapping { return &csvMapping{file: file} }

func (m *csvMapping) Lookup(ctx context.Context, keys []string) (string, string, error) {
	return "", "", errors.New("csv mapping not implemented")
}
func (m *csvMapping) Check(ctx context.Context) ([]string, error) {
	return nil, errors.New("not implemented")
}
func (m *csvMapping) Close() error   { return nil }
func (m *csvMapping) String() string { return "csv:" + m.file }
