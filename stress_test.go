package main

import (
	"testing"
	"time"
)

func TestStressTimeout(t *testing.T) {
	for _, tc := range []struct {
		env  string
		want time.Duration
	}{
		{"", 0}, {"10s", 10 * time.Second}, {"1m", time.Minute}, {"0s", 0}, {"-5s", 0}, {"ten", 0},
	} {
		if got := parseStressTimeout(tc.env); got != tc.want {
			t.Errorf("parseStressTimeout(%q) = %v, want %v", tc.env, got, tc.want)
		}
	}

	saved := stressTimeout
	defer func() { stressTimeout = saved }()
	s := &Session{cfg: &Config{}}
	s.cfg.CommandTimeout.Duration = 5 * time.Minute

	stressTimeout = 0
	if got := s.commandTimeout(); got != 5*time.Minute {
		t.Errorf("no stress: %v", got)
	}
	stressTimeout = 10 * time.Second
	if got := s.commandTimeout(); got != 10*time.Second {
		t.Errorf("stress before MAIL: %v, want 10s", got)
	}
	s.tx = &transaction{}
	if got := s.commandTimeout(); got != 5*time.Minute {
		t.Errorf("stress in a transaction: %v, want command_timeout", got)
	}
	s.tx = nil
	s.cfg.CommandTimeout.Duration = 3 * time.Second
	if got := s.commandTimeout(); got != 3*time.Second {
		t.Errorf("command_timeout shorter than the stress timeout: %v, want 3s", got)
	}
}
