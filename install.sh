#!/bin/sh
# install.sh: install willi from an unpacked release folder (or from the source
# tree after `make build`). Run as root:
#
#   ./install.sh                 install or upgrade
#   ./install.sh --uninstall     remove program and units; keep config, CSV,
#                                cache and the willi user
#
# Options and environment:
#   --destdir DIR | DESTDIR=DIR  install under DIR (packaging, tests): no user
#                                is created and systemctl is not called; group
#                                ownership is set only if the group exists here
#   UNITDIR=DIR                  where the systemd units go
#                                (default /etc/systemd/system)
#   WILLI_USER=, WILLI_GROUP=    the account willi runs as (default willi)
#
# Idempotent: running it again upgrades the program, the units and the
# examples, and never touches willi.conf or routes.csv once they exist.
set -eu
umask 022

PREFIX=/opt/willi
UNITDIR=${UNITDIR:-/etc/systemd/system}
WILLI_USER=${WILLI_USER:-willi}
WILLI_GROUP=${WILLI_GROUP:-$WILLI_USER}
DESTDIR=${DESTDIR:-}
action=install
# Both ways to run willi under systemd: per-connection units (willi.socket,
# Accept=yes) and one long-running willi serve (willi-serve.socket).
UNITS="willi.socket willi@.service willi-serve.socket willi-serve.service"

usage() {
	sed -n '2,19s/^# \{0,1\}//p' "$0"
}

while [ $# -gt 0 ]; do
	case $1 in
	--uninstall) action=uninstall ;;
	--destdir)
		[ $# -ge 2 ] || { echo "install.sh: --destdir needs a folder" >&2; exit 2; }
		DESTDIR=$2
		shift
		;;
	--destdir=*) DESTDIR=${1#--destdir=} ;;
	-h | --help) usage; exit 0 ;;
	*)
		echo "install.sh: unknown argument: $1" >&2
		usage >&2
		exit 2
		;;
	esac
	shift
done

D=${DESTDIR%/}
SRC=$(cd "$(dirname "$0")" && pwd)
ETC=$PREFIX/etc
SHARE=$PREFIX/share

say() { printf '%s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

if [ -z "$D" ] && ! is_root; then
	die "run me as root (or with DESTDIR=folder to install under a folder)"
fi

systemd_running() { [ -z "$D" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

group_known() { getent group "$WILLI_GROUP" >/dev/null 2>&1; }

# put MODE SRC DEST: install one file atomically (a session starting at this
# moment sees the old file or the new one, never half of one), root-owned.
put() {
	mode=$1 from=$2 to=$3
	[ -f "$from" ] || die "missing $from (run me from the unpacked release folder)"
	tmp=$(dirname "$to")/.$(basename "$to").new
	cp "$from" "$tmp"
	if is_root; then chown root:root "$tmp"; fi
	chmod "$mode" "$tmp"
	mv -f "$tmp" "$to"
}

# mkd MODE DIR: create a root-owned folder, or set its mode.
mkd() {
	mkdir -p "$2"
	if is_root; then chown root:root "$2"; fi
	chmod "$1" "$2"
}

# to_group PATH...: give the files to willi's group, when it exists.
to_group() {
	if is_root && group_known; then
		chgrp "$WILLI_GROUP" "$@"
	fi
}

create_user() {
	nologin=/usr/sbin/nologin
	[ -x "$nologin" ] || nologin=/sbin/nologin
	[ -x "$nologin" ] || nologin=/bin/false
	if ! group_known; then
		groupadd --system "$WILLI_GROUP"
		say "created system group $WILLI_GROUP"
	fi
	if ! getent passwd "$WILLI_USER" >/dev/null 2>&1; then
		useradd --system --gid "$WILLI_GROUP" --no-create-home --home-dir /nonexistent \
			--shell "$nologin" --comment "willi SMTP routing proxy" "$WILLI_USER"
		say "created system user $WILLI_USER"
	fi
}

do_install() {
	if [ -z "$D" ]; then
		create_user
	elif ! group_known; then
		say "note: group $WILLI_GROUP does not exist here; $ETC stays group root"
	fi

	mkd 0755 "$D$PREFIX"
	mkd 0755 "$D$PREFIX/bin"
	# Config folder: readable by group willi only; setgid, so that files
	# created in it later (willi.conf, TLS keys) belong to group willi too.
	mkd 2750 "$D$ETC"
	to_group "$D$ETC"
	mkd 0755 "$D$SHARE"
	mkd 0755 "$D$SHARE/contrib"
	mkd 0755 "$D$SHARE/contrib/xinetd"
	mkd 0755 "$D$SHARE/contrib/tcpserver"
	mkd 0755 "$D$SHARE/systemd"
	mkd 0755 "$D$UNITDIR"

	put 0755 "$SRC/willi" "$D$PREFIX/bin/willi"

	put 0640 "$SRC/etc/willi.conf.example" "$D$ETC/willi.conf.example"
	put 0640 "$SRC/etc/routes.csv.example" "$D$ETC/routes.csv.example"
	to_group "$D$ETC/willi.conf.example" "$D$ETC/routes.csv.example"
	if [ -e "$D$ETC/routes.csv" ]; then
		say "kept $ETC/routes.csv"
	else
		put 0640 "$SRC/etc/routes.csv.example" "$D$ETC/routes.csv"
		to_group "$D$ETC/routes.csv"
		say "installed the sample $ETC/routes.csv"
	fi
	if [ -e "$D$ETC/willi.conf" ]; then
		say "kept $ETC/willi.conf"
	fi

	for f in README.md LICENSE; do
		if [ -f "$SRC/$f" ]; then put 0644 "$SRC/$f" "$D$SHARE/$f"; fi
	done
	put 0644 "$SRC/contrib/xinetd/willi" "$D$SHARE/contrib/xinetd/willi"
	put 0755 "$SRC/contrib/tcpserver/run" "$D$SHARE/contrib/tcpserver/run"
	for unit in $UNITS; do
		put 0644 "$SRC/$unit" "$D$SHARE/systemd/$unit"
		put 0644 "$SRC/$unit" "$D$UNITDIR/$unit"
	done

	# The xinetd service, disabled, where xinetd is installed; an existing
	# one is the operator's.
	if [ -d "$D/etc/xinetd.d" ]; then
		if [ -e "$D/etc/xinetd.d/willi" ]; then
			say "kept /etc/xinetd.d/willi"
		else
			put 0644 "$SRC/contrib/xinetd/willi" "$D/etc/xinetd.d/willi"
			say "installed /etc/xinetd.d/willi (disabled)"
		fi
	fi

	if systemd_running; then
		systemctl daemon-reload
	fi

	version=$("$D$PREFIX/bin/willi" version 2>/dev/null || true)
	say ""
	say "${version:-willi} is installed in $D$PREFIX."
	if [ -n "$D" ]; then
		return 0
	fi
	if systemd_running && systemctl -q is-active willi.socket 2>/dev/null; then
		say "willi.socket is active: the next connection runs the new program."
		return 0
	fi
	if systemd_running && systemctl -q is-active willi-serve.socket 2>/dev/null; then
		say "willi-serve.socket is active: new sessions run the new program;"
		say "  systemctl reload willi-serve.service runs it for willi serve itself"
		say "  (in place: sessions in progress go on, new connections do not wait)."
		return 0
	fi
	cat <<EOF
Next steps:
  1. Configure it (every key is explained in the example):
       cp -p $ETC/willi.conf.example $ETC/willi.conf
       editor $ETC/willi.conf $ETC/routes.csv
  2. Check the config and open every mapping:
       $PREFIX/bin/willi check
       $PREFIX/bin/willi lookup postmaster@example.com
  3. Start accepting mail on port 25, with one long-running willi serve
     starting a willi per connection (the faster way; see the README):
       systemctl enable --now willi-serve.socket
     or with one systemd unit per connection:
       systemctl enable --now willi.socket
     (without systemd: $SHARE/contrib/xinetd/willi or
      $SHARE/contrib/tcpserver/run; see $SHARE/README.md)
EOF
}

# same FILE SHIPPED: FILE is unchanged from what we installed.
same() { [ -f "$2" ] && cmp -s "$1" "$2"; }

do_uninstall() {
	if systemd_running; then
		systemctl disable --now willi.socket willi-serve.socket willi-serve.service >/dev/null 2>&1 || true
	fi
	for unit in $UNITS; do
		rm -f "$D$UNITDIR/$unit" "$D$SHARE/systemd/$unit"
	done
	if systemd_running; then
		systemctl daemon-reload
	fi
	if [ -e "$D/etc/xinetd.d/willi" ]; then
		if same "$D/etc/xinetd.d/willi" "$D$SHARE/contrib/xinetd/willi"; then
			rm -f "$D/etc/xinetd.d/willi"
		else
			say "kept /etc/xinetd.d/willi: it was changed; remove it and reload xinetd yourself"
		fi
	fi
	rm -f "$D$PREFIX/bin/willi" "$D$PREFIX/bin/.willi.new"
	rmdir "$D$PREFIX/bin" 2>/dev/null || true
	rm -f "$D$SHARE/README.md" "$D$SHARE/LICENSE" \
		"$D$SHARE/contrib/xinetd/willi" "$D$SHARE/contrib/tcpserver/run"
	for d in contrib/xinetd contrib/tcpserver contrib systemd ""; do
		rmdir "$D$SHARE/$d" 2>/dev/null || true
	done
	say "willi is uninstalled. Kept: $ETC (config and mappings), /var/cache/willi and the user $WILLI_USER."
	say "To remove them too: rm -r $ETC /var/cache/willi; rmdir $PREFIX; userdel $WILLI_USER"
}

case $action in
install) do_install ;;
uninstall) do_uninstall ;;
esac
