package main

import (
	"bufio"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"
)

// TestUpstreamDebugVerbatim: the debug transcript shows each line the
// upstream sent as it sent it, not as willi parsed it.
func TestUpstreamDebugVerbatim(t *testing.T) {
	srv, cli := net.Pipe()
	defer srv.Close()
	defer cli.Close()
	var logBuf syncBuffer
	log := slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	u := &upstream{p: upstreamParams{log: log, debug: true}, conn: cli, r: bufio.NewReader(cli)}
	go srv.Write([]byte("250-up.test says hi\r\n250 no enhanced code\r\n"))
	r, err := u.readReply(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r.Enh != "2.0.0" {
		t.Fatalf("parsed enhanced code %q, want the class's generic 2.0.0", r.Enh)
	}
	for _, want := range []string{`msg=u< line="250-up.test says hi"`, `msg=u< line="250 no enhanced code"`} {
		if !strings.Contains(logBuf.String(), want) {
			t.Errorf("log lacks %s:\n%s", want, logBuf.String())
		}
	}
}
