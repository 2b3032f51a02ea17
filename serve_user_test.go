package main

import (
	"os/user"
	"strconv"
	"strings"
	"testing"
)

func TestServeSessionCredential(t *testing.T) {
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("this test needs the user nobody: %v", err)
	}
	uid, _ := strconv.Atoi(nobody.Uid)

	// As root: -user is required and must not be root.
	if _, err := sessionCredential("", 0); err == nil || !strings.Contains(err.Error(), "never run as root") {
		t.Errorf("root without -user: %v, want a refusal", err)
	}
	if _, err := sessionCredential("root", 0); err == nil || !strings.Contains(err.Error(), "root") {
		t.Errorf("root with -user root: %v, want a refusal", err)
	}
	if _, err := sessionCredential("no-such-user-willi", 0); err == nil {
		t.Error("an unknown -user was accepted")
	}
	su, err := sessionCredential("nobody", 0)
	if err != nil || su.credential == nil || su.credential.Uid != uint32(uid) || su.name != "nobody" {
		t.Errorf("root with -user nobody: %+v %v", su, err)
	} else {
		gid, _ := strconv.Atoi(nobody.Gid)
		if su.credential.Gid != uint32(gid) {
			t.Errorf("gid %d, want nobody's %d", su.credential.Gid, gid)
		}
	}

	// Not as root: sessions run as we do; -user may only name us.
	su, err = sessionCredential("", uid)
	if err != nil || su.credential != nil || su.name != "nobody" {
		t.Errorf("as nobody without -user: %+v %v", su, err)
	}
	su, err = sessionCredential("nobody", uid)
	if err != nil || su.credential != nil {
		t.Errorf("as nobody with -user nobody: %+v %v", su, err)
	}
	if _, err := sessionCredential("root", uid); err == nil {
		t.Error("a non-root serve accepted -user root")
	}
	if _, err := sessionCredential("nobody", uid+1); err == nil || !strings.Contains(err.Error(), "only root") {
		t.Errorf("switching user without root: %v, want a refusal", err)
	}
}
