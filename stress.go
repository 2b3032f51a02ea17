package main

// Stress: willi serve starts a session with WILLI_STRESS_TIMEOUT set when it
// is near its connection cap, and that session allows the client only that
// long per command until it gives MAIL FROM (Postfix does the same with
// smtpd_timeout = ${stress?{10}:{300}}s): under load, clients that connect
// and idle, or never get to a transaction, give their slot back sooner.

import (
	"os"
	"time"
)

// stressEnv names the variable willi serve sets for a session under stress.
const stressEnv = "WILLI_STRESS_TIMEOUT"

// stressTimeout is the command timeout before MAIL FROM under stress; 0
// when not under stress (or the value is not a positive duration).
var stressTimeout = parseStressTimeout(os.Getenv(stressEnv))

func parseStressTimeout(v string) time.Duration {
	if v == "" {
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0
	}
	return d
}

// commandTimeout is how long the client may stay silent before its next
// command: command_timeout, cut to the stress timeout while no
// transaction has started.
func (s *Session) commandTimeout() time.Duration {
	d := s.cfg.CommandTimeout.Duration
	if stressTimeout > 0 && stressTimeout < d && s.tx == nil {
		return stressTimeout
	}
	return d
}
