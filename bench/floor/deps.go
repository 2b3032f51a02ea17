//go:build deps

package main

// Built with -tags deps, the floor links the dependencies willi's contract
// names (and crypto/tls for STARTTLS) and runs their package initialisation,
// but still does nothing else: the bench's "deps" column, what those
// dependencies cost every process before willi does any work.
import (
	_ "crypto/tls"

	_ "github.com/BurntSushi/toml"
	_ "github.com/coreos/go-systemd/v22/activation"
	_ "github.com/coreos/go-systemd/v22/journal"
	_ "github.com/go-sql-driver/mysql"
	_ "github.com/gocarina/gocsv"
)
