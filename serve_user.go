package main

// The account willi serve runs sessions as. A session never runs as root:
// it parses what any client on the Internet sends.

import (
	"errors"
	"fmt"
	"os/user"
	"strconv"
	"syscall"
)

// sessionUser is who the children run as; credential is nil when they run
// as willi serve itself does.
type sessionUser struct {
	name       string
	credential *syscall.Credential
}

// sessionCredential decides the sessions' account from -user NAME and our
// effective uid: as root, -user is required and must not name root; not as
// root, the sessions run as we do, and -user may only name that account.
func sessionCredential(name string, euid int) (sessionUser, error) {
	if name == "" {
		if euid == 0 {
			return sessionUser{}, errors.New("started as root without -user: sessions never run as root; give -user NAME (e.g. -user willi) or start willi serve as that user (systemd: User=)")
		}
		return sessionUser{name: accountName(strconv.Itoa(euid))}, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return sessionUser{}, fmt.Errorf("-user %s: %w", name, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return sessionUser{}, fmt.Errorf("-user %s: uid %q gid %q are not numbers", name, u.Uid, u.Gid)
	}
	if uid == 0 {
		return sessionUser{}, fmt.Errorf("-user %s is root: sessions never run as root", name)
	}
	if euid != 0 {
		if uint64(euid) != uid {
			return sessionUser{}, fmt.Errorf("-user %s: only root can start sessions as another user", name)
		}
		return sessionUser{name: u.Username}, nil
	}
	// Supplementary groups too: a CSV file or TLS key may be readable
	// through one of them. Without this, the children would keep root's.
	ids, err := u.GroupIds()
	if err != nil {
		return sessionUser{}, fmt.Errorf("-user %s: its groups: %v", name, err)
	}
	var groups []uint32
	for _, id := range ids {
		if g, err := strconv.ParseUint(id, 10, 32); err == nil && g != gid {
			groups = append(groups, uint32(g))
		}
	}
	return sessionUser{name: u.Username, credential: &syscall.Credential{
		Uid: uint32(uid), Gid: uint32(gid), Groups: groups,
	}}, nil
}

// accountName is the user name of uid, or the number when it has none.
func accountName(uid string) string {
	if u, err := user.LookupId(uid); err == nil {
		return u.Username
	}
	return uid
}
