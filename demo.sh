#!/bin/bash
# demo.sh: see willi route a message, on a fresh Debian machine, in a minute.
#
#   sudo ./demo.sh        (root only to apt-get install what is missing)
#
# It installs Postfix's smtp-sink and swaks if missing (apt-get), builds willi
# if there is no ./willi, starts smtp-sink on 127.0.0.1 as the upstream mail
# server, writes a config whose CSV mapping routes example.com to that sink,
# runs `willi serve`, sends one message with swaks and shows what the sink
# received. It stops everything it started and removes its temp folder.
#
# Environment: DEMO_LISTEN (default 127.0.0.1:2525) where willi listens,
# DEMO_SINK_PORT (default 2526) the sink's port on 127.0.0.1.
set -euo pipefail

LISTEN=${DEMO_LISTEN:-127.0.0.1:2525}
SINK_PORT=${DEMO_SINK_PORT:-2526}
here=$(cd "$(dirname "$0")" && pwd)

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { printf 'demo.sh: %s\n' "$*" >&2; exit 1; }

# --- what the demo needs ------------------------------------------------------
need=()
command -v smtp-sink >/dev/null 2>&1 || [ -x /usr/sbin/smtp-sink ] || need+=(postfix)
command -v swaks >/dev/null 2>&1 || need+=(swaks)
if [ ${#need[@]} -gt 0 ]; then
	step "installing ${need[*]}"
	[ "$(id -u)" -eq 0 ] || die "need ${need[*]}: run me as root, or: sudo apt-get install ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# Postfix only for its smtp-sink: no mail system configured or started.
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	apt-get update -q
	# --no-remove: never swap out the host's own MTA for the demo.
	apt-get install -y -q --no-install-recommends --no-remove "${need[@]}" ||
		die "apt-get could not install ${need[*]} without removing packages"
fi
SMTP_SINK=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)

if [ -x "$here/willi" ] && [ ! -f "$here/go.mod" ]; then
	WILLI=$here/willi # an unpacked release
else
	command -v go >/dev/null 2>&1 || die "go is needed to build willi (https://go.dev/doc/install)"
	step "building willi"
	(cd "$here" && go build -ldflags "-X main.version=$(git describe --tags --always --dirty 2>/dev/null || echo dev)" -o willi .)
	WILLI=$here/willi
fi
"$WILLI" version

# --- a temp folder, and a promise to clean up -----------------------------------
tmp=$(mktemp -d /tmp/willi-demo.XXXXXX)
sink_pid="" serve_pid=""
cleanup() {
	if [ -n "$serve_pid" ]; then kill -TERM "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; fi
	if [ -n "$sink_pid" ]; then kill -TERM "$sink_pid" 2>/dev/null || true; wait "$sink_pid" 2>/dev/null || true; fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# smtp-sink drops root privileges to this user and writes the messages it
# receives as files into sink/.
chmod 755 "$tmp"
mkdir -m 1777 "$tmp/sink"
sink_user=()
if [ "$(id -u)" -eq 0 ]; then sink_user=(-u nobody); fi

step "starting smtp-sink on 127.0.0.1:$SINK_PORT as the upstream mail server"
"$SMTP_SINK" "${sink_user[@]}" -d "$tmp/sink/%M." "127.0.0.1:$SINK_PORT" 10 &
sink_pid=$!

step "config: $tmp/willi.conf and $tmp/routes.csv"
cat >"$tmp/willi.conf" <<EOF
hostname = "willi.demo"
log_level = "info"

[[mapping]]
type = "csv"
file = "routes.csv"
EOF
cat >"$tmp/routes.csv" <<EOF
pattern,server
example.com,127.0.0.1:$SINK_PORT
EOF
cat "$tmp/willi.conf" "$tmp/routes.csv"

step "willi check; willi lookup someone@example.com"
"$WILLI" check -config "$tmp/willi.conf"
"$WILLI" lookup -config "$tmp/willi.conf" someone@example.com

step "willi serve -listen $LISTEN"
# willi serve never runs a session as root: as root, sessions run as nobody,
# from a copy of the program that nobody can reach.
serve_user=()
if [ "$(id -u)" -eq 0 ]; then
	cp "$WILLI" "$tmp/willi"
	WILLI=$tmp/willi
	serve_user=(-user nobody)
fi
"$WILLI" serve -listen "$LISTEN" -config "$tmp/willi.conf" "${serve_user[@]}" &
serve_pid=$!
host=${LISTEN%:*} port=${LISTEN##*:}
host=${host#[} host=${host%]}
for _ in $(seq 50); do
	if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then break; fi
	kill -0 "$serve_pid" 2>/dev/null || die "willi serve did not start"
	sleep 0.1
done

step "swaks sends a message to someone@example.com through willi"
swaks --server "$host" --port "$port" --from demo@sender.test --to someone@example.com \
	--helo client.test --header "Subject: willi demo $$" --body "Routed by willi."

step "what smtp-sink received"
for _ in $(seq 50); do
	got=$(grep -rl "willi demo $$" "$tmp/sink" 2>/dev/null | head -n 1 || true)
	[ -n "$got" ] && break
	sleep 0.1
done
[ -n "$got" ] || die "the sink did not receive the message"
cat "$got"

step "done: the message went client -> willi -> upstream, routed by routes.csv"
