#!/bin/bash
# bench/tls-setup.sh: what STARTTLS adds to session set-up, on each side of
# willi, with real Postfix instances as the sending MTA and as the upstream.
#
#   sender Postfix --(plain | STARTTLS)--> willi --(plain | STARTTLS)--> upstream Postfix
#
# N messages are sent one at a time (one session each) with TLS off on both
# sides, then N with TLS on both sides (willi's [tls] plus starttls = "mirror").
# From willi's debug log (millisecond timestamps) it takes per session:
#   client side    willi's 220 banner -> the client's MAIL FROM
#   upstream side  the upstream's 220 banner -> willi's MAIL FROM to it
# and prints the median and mean of each, plain and TLS, and the difference.
#
# Usage (as root, with test/deps.sh's packages): bench/tls-setup.sh [N]
# N defaults to 20. WILLI=path uses a prebuilt binary; BENCH_SENDERS="postfix"
# or "exim" runs one sender (default both). All on 127.0.0.1.
set -euo pipefail
N=${1:-20}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
export PATH="$PATH:/usr/local/go/bin:/usr/sbin:/sbin"
[ "$(id -u)" = 0 ] || { echo "bench/tls-setup.sh: run as root (private Postfix instances)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/willi-tlsbench-XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
	local pid
	for d in "$WORK"/up "$WORK"/snd; do
		[ -f "$d/etc/main.cf" ] && postfix -c "$d/etc" stop >/dev/null 2>&1 || true
	done
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
	[ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
	for _ in $(seq 100); do
		python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1',$1)))" 2>/dev/null && return 0
		sleep 0.1
	done
	echo "nothing listens on port $1" >&2; exit 1
}

if [ -n "${WILLI:-}" ]; then
	BIN=$WILLI
else
	BIN=$WORK/willi
	(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -o "$BIN" .)
fi

UP_PORT=$(free_port)
WILLI_PORT=$(free_port)

# postfix_instance DIR ROLE SMTPD_ADDR|- RELAYHOST: a private instance laid
# out by test/postfix-instance.sh (as the tests' instances are), with TLS on
# both of its sides.
postfix_instance() {
	local dir=$1 role=$2 listen=$3 relay=$4
	if [ "$listen" = - ]; then
		"$ROOT/test/postfix-instance.sh" "$dir"
	else
		"$ROOT/test/postfix-instance.sh" "$dir" "$listen inet n - n - - smtpd"
	fi
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-keyout "$dir/etc/key.pem" -out "$dir/etc/cert.pem" -days 2 -subj "/CN=$role.test" 2>/dev/null
	echo "alice@example.org example.org/alice/" >"$dir/etc/vmailbox"
	cat >>"$dir/etc/main.cf" <<EOC
myhostname = $role.test
myorigin = \$myhostname
smtpd_tls_cert_file = $dir/etc/cert.pem
smtpd_tls_key_file = $dir/etc/key.pem
smtpd_tls_security_level = may
smtp_tls_security_level = may
smtpd_authorized_xclient_hosts = 127.0.0.1
relayhost = $relay
smtp_tls_loglevel = 1
EOC
	if [ "$role" = upstream ]; then
		printf 'virtual_mailbox_domains = example.org\nvirtual_mailbox_maps = hash:%s\n' "$dir/etc/vmailbox" >>"$dir/etc/main.cf"
	fi
	postmap -c "$dir/etc" "hash:$dir/etc/vmailbox"
	postfix -c "$dir/etc" start
}

postfix_instance "$WORK/up" upstream "127.0.0.1:$UP_PORT" ""
# The sender uses no connection cache: one session per message.
postfix_instance "$WORK/snd" sender - "[127.0.0.1]:$WILLI_PORT"
postconf -c "$WORK/snd/etc" -e smtp_connection_cache_on_demand=no >/dev/null
postfix -c "$WORK/snd/etc" reload >/dev/null 2>&1
wait_port "$UP_PORT"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
	-keyout "$WORK/willi.key" -out "$WORK/willi.crt" -days 2 -subj /CN=willi.test 2>/dev/null

# Exim as a second sender (test/deps.sh extracts Debian's packages): its own
# configuration, spool and log, run in a private mount namespace whose
# passwd and group add the Debian-exim user the binary is built for.
EXIM_BIN=${WILLI_EXIM_ROOT:-/var/cache/willi-test/exim4}/usr/sbin/exim4
setup_exim() {
	local d=$WORK/exim
	mkdir -p "$d/spool" "$d/log" "$d/etc"
	chown 64990:64990 "$d/spool" "$d/log"
	{ cat /etc/passwd; echo "Debian-exim:x:64990:64990:Exim:/nonexistent:/usr/sbin/nologin"; } >"$d/etc/passwd"
	{ cat /etc/group; echo "Debian-exim:x:64990:"; } >"$d/etc/group"
	cat >"$d/exim.conf" <<EOC
exim_path = $EXIM_BIN
spool_directory = $d/spool
log_file_path = $d/log/%slog
primary_hostname = exim.sender.test
never_users =
keep_environment =
host_lookup =
begin routers
relay:
  driver = manualroute
  route_list = * [127.0.0.1]::$WILLI_PORT byname
  transport = remote_smtp
  self = send
begin transports
remote_smtp:
  driver = smtp
  allow_localhost
  hosts_try_chunking =
  tls_verify_certificates =
begin retry
* * F,1d,1h
EOC
}
exim_send() {
	unshare -m sh -c 'mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group && shift 2 && exec "$@"' exim \
		"$WORK/exim/etc/passwd" "$WORK/exim/etc/group" "$EXIM_BIN" -C "$WORK/exim/exim.conf" -odi -i "$@" 2>>"$WORK/exim/log/submit.log"
}
SENDERS=${BENCH_SENDERS:-postfix exim}
case " $SENDERS " in *" exim "*)
	[ -x "$EXIM_BIN" ] || { echo "bench/tls-setup.sh: $EXIM_BIN missing (run test/deps.sh)" >&2; exit 1; }
	setup_exim ;;
esac

# run_mode SENDER plain|tls: starts willi with that config, has SENDER send N
# messages one at a time, stops willi; the log is $WORK/willi-SENDER-MODE.log.
run_mode() {
	local sender=$1 mode=$2 conf=$WORK/willi-$2.conf log=$WORK/willi-$1-$2.log i sent
	{
		echo 'hostname = "willi.test"'
		echo 'log_level = "debug"'
		if [ "$mode" = tls ]; then
			printf '[tls]\ncert_file = "%s"\nkey_file = "%s"\n' "$WORK/willi.crt" "$WORK/willi.key"
		fi
		printf '[[mapping]]\ntype = "static"\nserver = "127.0.0.1:%s"\n' "$UP_PORT"
		printf '[[upstream]]\nserver = "127.0.0.1:%s"\nstarttls = "mirror"\n' "$UP_PORT"
	} >"$conf"
	systemd-socket-activate --accept --inetd -l "127.0.0.1:$WILLI_PORT" "$BIN" -config "$conf" >"$log" 2>&1 &
	PIDS+=($!)
	wait_port "$WILLI_PORT"
	for i in $(seq "$N"); do
		if [ "$sender" = exim ]; then
			printf 'Subject: %s %s\n\nbody\n' "$mode" "$i" | exim_send -f sender@sender.test alice@example.org
			continue
		fi
		sent=$(grep -c 'status=sent' "$WORK/snd/maillog" 2>/dev/null || true)
		printf 'Subject: %s %s\n\nbody\n' "$mode" "$i" | sendmail -C "$WORK/snd/etc" -f sender@sender.test alice@example.org
		for _ in $(seq 200); do
			[ "$(grep -c 'status=sent' "$WORK/snd/maillog" 2>/dev/null || true)" -gt "$sent" ] && break
			sleep 0.05
		done
	done
	kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
	unset 'PIDS[-1]'
	sleep 0.3
}

# stats SENDER MODE: per-session set-up times (ms) from willi's debug log.
stats() {
	awk '
	function ms(ts,   t) { split(substr(ts, 6), t, /[T:Z]/); return ((t[2] * 60 + t[3]) * 60 + t[4]) * 1000 }
	function sess(   s) { s = $0; sub(/.*session=/, "", s); sub(/ .*/, "", s); return s }
	/msg=c< / && /reply="220 willi.test/ { cb[sess()] = ms($1) }
	/msg=c> / && /line="MAIL FROM/ { s = sess(); if (!(s in cm)) cm[s] = ms($1) }
	/msg=u< / && / line="220 / && !/Ready to start TLS/ { s = sess(); if (!(s in ub)) ub[s] = ms($1) }
	/msg=u> / && /line="MAIL FROM/ { s = sess(); if (!(s in um)) um[s] = ms($1) }
	END {
		for (s in cm) if (s in cb) print "client", cm[s] - cb[s]
		for (s in um) if (s in ub) print "upstream", um[s] - ub[s]
	}' "$WORK/willi-$1-$2.log" | sort -k1,1 -k2n | awk -v sender="$1" -v mode="$2" '
	{ v[$1, ++n[$1]] = $2; sum[$1] += $2 }
	END {
		for (side in n) {
			k = n[side]; med = (k % 2) ? v[side, (k + 1) / 2] : (v[side, k / 2] + v[side, k / 2 + 1]) / 2
			printf "%s\t%s\t%s\t%d\t%.1f\t%.1f\n", sender, side, mode, k, med, sum[side] / k
		}
	}'
}

for sender in $SENDERS; do
	run_mode "$sender" plain
	run_mode "$sender" tls
done
{
	printf 'sender\tside\tmode\tsessions\tmedian_ms\tmean_ms\n'
	for sender in $SENDERS; do
		{ stats "$sender" plain; stats "$sender" tls; } | sort -k2,2 -k3r
	done
} | column -t
case " $SENDERS " in *" postfix "*)
	grep -q 'TLS connection established' "$WORK/snd/maillog" || echo "warning: the Postfix sender logged no TLS session" >&2 ;;
esac
case " $SENDERS " in *" exim "*)
	grep -q 'X=TLS' "$WORK/exim/log/mainlog" || echo "warning: the Exim sender logged no TLS session" >&2 ;;
esac
