package main

import (
	"reflect"
	"testing"
	"time"
)

// TestServeSessionsHandOver: the children willi serve hands its next
// program on a reload come back as they were, IPv6 sources (which hold a
// "/") included; what is not an entry is skipped.
func TestServeSessionsHandOver(t *testing.T) {
	start := time.Unix(0, 1_700_000_000_123_456_789)
	children := map[int]*child{
		101: {pid: 101, key: "192.0.2.7", remote: "192.0.2.7:40001", start: start},
		202: {pid: 202, key: "2001:db8:0:1::/64", remote: "[2001:db8:0:1::5]:40002", start: start.Add(time.Second)},
	}
	got := parseSessions(formatSessions(children))
	for pid, ch := range got {
		ch.start = ch.start.Round(0)
		children[pid].start = children[pid].start.Round(0)
	}
	if !reflect.DeepEqual(got, children) {
		t.Errorf("handed over %v, got back %v", children, got)
	}
	if got := parseSessions(""); len(got) != 0 {
		t.Errorf("no sessions: got %v", got)
	}
	if got := parseSessions("x/1/a/b,0/1/a/b,7/y/a/b,12"); len(got) != 0 {
		t.Errorf("malformed entries: got %v", got)
	}
}
