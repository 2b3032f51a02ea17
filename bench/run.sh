#!/bin/bash
# bench/run.sh: willi against the limits of its shape, in one run, on loopback.
#
#   direct  smtp-source -> smtp-sink (the limit)
#   floor   bench/floor (a minimal per-process SMTP responder) under
#           systemd-socket-activate --accept --inetd (the shape's floor)
#   deps    the floor built with -tags deps: it also links the libraries
#           willi's contract names and runs their init, nothing more
#   pipe    bench/pipe under the same launcher: dials smtp-sink and copies
#           bytes both ways (the least any relay in this shape does)
#   willi   willi under the same launcher, relaying to smtp-sink
#   serve   willi serve -listen ADDR, relaying to smtp-sink
#   nginx   nginx's mail proxy relaying to smtp-sink (smtp_auth none,
#           auth_http answered by nginx itself)
#
# Then, as root, the container columns (bench/container.sh): willi under a
# real systemd in the booted test container, per-connection units
# (willi.socket), willi serve's units (willi-serve.socket) and
# systemd-socket-activate there, at 1 and 20 clients and 200 at once.
#
# Loads: 1 message per session, 10 messages per session, one 20 MB message,
# idle connections held after RCPT (private memory per connection), peak RSS
# and CPU of one process (also with a 1 GiB message), connect-to-banner
# latency. Every load checks that smtp-sink received every message.
#
# Environment: BENCH_QUICK=1 (a few seconds, for the smoke test),
# BENCH_RUNS=N (default 3), BENCH_OUT=DIR (default bench/out),
# BENCH_XCLIENT=0 (nginx xclient off, willi client_address none),
# BENCH_STRICT=1 (exit 2 when a goal is missed), BENCH_CONTAINER=0 (skip
# the container columns) or BENCH_CONTAINER=only (run just those). Exit 1
# when a load failed or the sink missed a message. See bench/README.md.
set -uo pipefail
export LC_ALL=C
export PATH="$PATH:/usr/local/go/bin:/usr/sbin:/sbin"

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
OUT=${BENCH_OUT:-$HERE/out}
QUICK=${BENCH_QUICK:-0}
XCLIENT=${BENCH_XCLIENT:-1}
STRICT=${BENCH_STRICT:-0}
CONTAINER=${BENCH_CONTAINER:-1}
if [ "$CONTAINER" = only ]; then
	exec bash "$HERE/container.sh"
fi

if [ "$QUICK" = 1 ]; then
	RUNS=${BENCH_RUNS:-1}
	SESSIONS=100     # 1 message per session
	MSG10_SESSIONS=20 # sessions of 10 messages
	BIG_MB=2         # "big" message size, MB (10^6 bytes)
	BIG_REPS=1       # big messages per target per run
	HUGE_REPS=0      # big-message files streamed in the huge probe (0: skip)
	IDLE=10          # idle connections held after RCPT
	LAT_N=10         # connects per target for banner latency
else
	RUNS=${BENCH_RUNS:-3}
	SESSIONS=2000
	MSG10_SESSIONS=200
	BIG_MB=20
	BIG_REPS=3
	HUGE_REPS=54 # 54 x 20 MB = 1.08 GB > 1 GiB
	IDLE=200
	LAT_N=100
fi
CONC=20          # concurrent sessions (smtp-source -s)
PER_SESSION=10   # messages per session in the msg10 load
SRC_TIMEOUT=300  # bound on any one smtp-source run, seconds
FROM=sender@bench.example
RCPT=rcpt@bench.example

START_US=${EPOCHREALTIME/./}
FAILS=0
PIDS=()          # every long-running process this script started
mkdir -p "$OUT/bin" "$OUT/log" "$OUT/data" "$OUT/nginx/tmp"
RESULTS=$OUT/results.tsv
MEDIANS=$OUT/medians.tsv
: >"$RESULTS"

say() { printf '%s\n' "$*" >&2; }
fail() {
	say "FAIL: $*"
	FAILS=$((FAILS + 1))
}
die() {
	say "bench: $*"
	exit 1
}
now_us() { echo "${EPOCHREALTIME/./}"; }
# record METRIC TARGET VALUE: one sample of this run.
record() { printf '%s\t%s\t%s\t%s\n' "$RUN" "$1" "$2" "$3" >>"$RESULTS"; }

# ---------------------------------------------------------------------------
# Processes: everything started here is in PIDS and stopped on exit, with the
# per-connection children of the launchers.

children() { pgrep -P "$1" 2>/dev/null || true; }

cleanup() {
	local pid c
	close_all_fds
	for pid in "${PIDS[@]}"; do
		for c in $(children "$pid"); do kill "$c" 2>/dev/null; done
		kill "$pid" 2>/dev/null
	done
	for pid in "${PIDS[@]}"; do
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# listening PORT: whether something listens on 127.0.0.1:PORT (from /proc, so
# no connection is made: a connection would start a session).
listening() {
	local hex
	hex=$(printf '%04X' "$1")
	awk -v h=":$hex" 'NR > 1 && $4 == "0A" && substr($2, length($2) - 4) == h { f = 1 } END { exit !f }' /proc/net/tcp
}

USED_PORTS=" "
pick_port() {
	local p
	for _ in $(seq 100); do
		p=$((20000 + RANDOM % 12000))
		case "$USED_PORTS" in *" $p "*) continue ;; esac
		listening "$p" && continue
		USED_PORTS="$USED_PORTS$p "
		echo "$p"
		return 0
	done
	die "no free port found"
}

# launch NAME FUNC: picks a port, runs FUNC PORT (which starts the service in
# the background and sets LAUNCHED_PID), waits until it listens; retries
# with another port when it does not come up. Sets PORT_<NAME>, PID_<NAME>.
launch() {
	local name=$1 fn=$2 port attempt
	for attempt in 1 2 3; do
		port=$(pick_port)
		LAUNCHED_PID=""
		"$fn" "$port"
		PIDS+=("$LAUNCHED_PID")
		for _ in $(seq 100); do
			listening "$port" && break
			kill -0 "$LAUNCHED_PID" 2>/dev/null || break
			sleep 0.05
		done
		if listening "$port" && kill -0 "$LAUNCHED_PID" 2>/dev/null; then
			printf -v "PORT_$name" '%s' "$port"
			printf -v "PID_$name" '%s' "$LAUNCHED_PID"
			say "started $name on 127.0.0.1:$port (pid $LAUNCHED_PID)"
			return 0
		fi
		say "$name did not come up on port $port (attempt $attempt); see $OUT/log/$name.err"
		kill "$LAUNCHED_PID" 2>/dev/null
		wait "$LAUNCHED_PID" 2>/dev/null
	done
	die "cannot start $name"
}

# wait_drain PID: wait (bounded) until the launcher PID has no children left.
wait_drain() {
	for _ in $(seq 200); do
		[ -z "$(children "$1")" ] && return 0
		sleep 0.05
	done
	say "warning: children of $1 still running: $(children "$1" | tr '\n' ' ')"
	return 1
}

# ---------------------------------------------------------------------------
# Preflight and build

for prog in smtp-source smtp-sink systemd-socket-activate nginx go pgrep timeout awk; do
	command -v "$prog" >/dev/null || die "$prog is missing; install the peers with: sudo test/deps.sh"
done
NGINX_MAIL_MODULE=${NGINX_MAIL_MODULE:-/usr/lib/nginx/modules/ngx_mail_module.so}
[ -f "$NGINX_MAIL_MODULE" ] || die "$NGINX_MAIL_MODULE is missing (libnginx-mod-mail); run: sudo test/deps.sh"

say "building willi, the floor, deps and pipe (CGO_ENABLED=0, -trimpath)"
(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -o "$OUT/bin/willi" .) || die "go build willi failed"
(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -o "$OUT/bin/floor" ./bench/floor) || die "go build floor failed"
(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -tags deps -o "$OUT/bin/deps" ./bench/floor) || die "go build deps failed"
(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -o "$OUT/bin/pipe" ./bench/pipe) || die "go build pipe failed"

# Message bodies: CRLF lines of 1000 octets, 10^6 octets per MB.
{
	printf 'From: <%s>\r\nTo: <%s>\r\nSubject: bench\r\n\r\n' "$FROM" "$RCPT"
	for i in $(seq 10); do printf 'line %d of a small benchmark message\r\n' "$i"; done
} >"$OUT/data/small.eml"
line=$(printf '%0998d' 0 | tr 0 X)
for _ in $(seq 1000); do printf '%s\r\n' "$line"; done >"$OUT/data/1mb"
for _ in $(seq "$BIG_MB"); do cat "$OUT/data/1mb"; done >"$OUT/data/big"

# ---------------------------------------------------------------------------
# The services

ROOT_OPTS=()
[ "$(id -u)" = 0 ] && ROOT_OPTS=(-u nobody)
start_sink() {
	smtp-sink "${ROOT_OPTS[@]}" -c -m 900 "127.0.0.1:$1" 1024 >"$OUT/log/sink.count" 2>"$OUT/log/sink.err" &
	LAUNCHED_PID=$!
}
export SYSTEMD_LOG_LEVEL=warning # systemd-socket-activate: no line per connection
# activate PORT NAME PROGRAM ARG...: the per-process targets all start the
# same way, with GOMAXPROCS=1 as willi@.service, the xinetd and tcpserver
# examples and willi serve set it for willi.
activate() {
	local port=$1 name=$2
	shift 2
	systemd-socket-activate --accept --inetd -l "127.0.0.1:$port" -E GOMAXPROCS=1 "$@" \
		>/dev/null 2>"$OUT/log/$name.err" &
	LAUNCHED_PID=$!
}
start_floor() { activate "$1" floor "$OUT/bin/floor"; }
start_deps() { activate "$1" deps "$OUT/bin/deps"; }
start_pipe() { activate "$1" pipe "$OUT/bin/pipe" "127.0.0.1:$PORT_sink"; }
start_willi() { activate "$1" willi "$OUT/bin/willi" -config "$OUT/willi.conf"; }
start_serve() {
	# willi serve never runs a session as root.
	local as=()
	if [ "$(id -u)" -eq 0 ]; then as=(-user nobody); fi
	"$OUT/bin/willi" serve -listen "127.0.0.1:$1" -config "$OUT/willi.conf" -max-conn 1000 -max-per-source 1000 "${as[@]}" \
		>/dev/null 2>"$OUT/log/serve.err" &
	LAUNCHED_PID=$!
}
start_nginx() {
	local auth
	auth=$(pick_port)
	local d=$OUT/nginx xc=on
	[ "$XCLIENT" = 1 ] || xc=off
	cat >"$d/nginx.conf" <<EOF
# Generated by bench/run.sh: nginx's mail proxy in front of smtp-sink.
load_module $NGINX_MAIL_MODULE;
daemon off;
master_process on;
worker_processes 2;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 2048; }
http {
    access_log off;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    # auth_http answered by nginx itself: every session goes to the sink.
    server {
        listen 127.0.0.1:$auth;
        location = /auth {
            add_header Auth-Status OK;
            add_header Auth-Server 127.0.0.1;
            add_header Auth-Port $PORT_sink;
            return 204;
        }
    }
}
mail {
    server_name bench.nginx;
    auth_http 127.0.0.1:$auth/auth;
    proxy_pass_error_message on;
    xclient $xc;
    server {
        listen 127.0.0.1:$1;
        protocol smtp;
        smtp_auth none;
    }
}
EOF
	nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" >"$OUT/log/nginx.err" 2>&1 &
	LAUNCHED_PID=$!
}

launch sink start_sink
client_address=xclient
[ "$XCLIENT" = 1 ] || client_address=none
cat >"$OUT/willi.conf" <<EOF
# Generated by bench/run.sh: every recipient to the smtp-sink.
hostname = "bench.willi"
log_level = "warn"
max_message_size = 2147483648

[[mapping]]
type = "static"
server = "127.0.0.1:$PORT_sink"

[[upstream]]
server = "127.0.0.1:$PORT_sink"
client_address = "$client_address"
EOF
"$OUT/bin/willi" check -config "$OUT/willi.conf" >"$OUT/log/willi-check.out" 2>&1 ||
	die "willi check failed: $(cat "$OUT/log/willi-check.out")"
launch floor start_floor
launch deps start_deps
launch pipe start_pipe
launch willi start_willi
launch serve start_serve
launch nginx start_nginx
PORT_direct=$PORT_sink

# The sink's running counter (smtp-sink -c): messages received so far.
sink_count() {
	local n
	n=$(tr '\r' '\n' <"$OUT/log/sink.count" | grep -o 'mesg=[0-9]*' | tail -n 1)
	echo "${n#mesg=}" | sed 's/^$/0/'
}
SINK_EXPECTED=0
# sink_check BEFORE N LABEL: the sink must have received N more messages.
# The floor and deps relay nothing (they answer 250 and drop the message),
# so loads on them are not counted; smtp-source and the probes still check
# their replies.
sink_check() {
	local want=$(($1 + $2)) got
	[[ $3 == *" floor"* || $3 == *" deps"* ]] && return 0
	SINK_EXPECTED=$((SINK_EXPECTED + $2))
	for _ in $(seq 100); do
		got=$(sink_count)
		[ "$got" -ge "$want" ] && break
		sleep 0.05
	done
	if [ "$got" -ne "$want" ]; then
		fail "sink: $3: received $((got - $1)) of $2 messages"
		return 1
	fi
	return 0
}

# ---------------------------------------------------------------------------
# A small SMTP client in bash (for the probes, idle connections, latency)

FDS=()
close_all_fds() {
	local fd
	for fd in "${FDS[@]}"; do exec {fd}>&-; done 2>/dev/null
	FDS=()
}
# smtp_read FD CODE: reads one reply; fails unless it starts with CODE.
smtp_read() {
	local line
	while IFS= read -r -t 120 -u "$1" line; do
		line=${line%$'\r'}
		if [[ $line =~ ^[0-9]{3}\ |^[0-9]{3}$ ]]; then
			[[ $line == "$2"* ]] && return 0
			SMTP_ERR=$line
			return 1
		fi
		[[ $line =~ ^[0-9]{3}- ]] || { SMTP_ERR="bad reply: $line"; return 1; }
	done
	SMTP_ERR="no reply (connection closed or timeout)"
	return 1
}
# smtp_cmd FD LINE CODE
smtp_cmd() {
	printf '%s\r\n' "$2" >&"$1" 2>/dev/null || { SMTP_ERR="write failed: $2"; return 1; }
	smtp_read "$1" "$3" || { SMTP_ERR="$2: $SMTP_ERR"; return 1; }
}
# smtp_open PORT: connects, reads the banner, sets FD.
smtp_open() {
	exec {FD}<>"/dev/tcp/127.0.0.1/$1" || { SMTP_ERR="connect failed"; return 1; }
	FDS+=("$FD")
	smtp_read "$FD" 220
}
smtp_close() {
	local fd=$1 i
	exec {fd}>&-
	for i in "${!FDS[@]}"; do [ "${FDS[$i]}" = "$fd" ] && unset 'FDS[i]'; done
}
# smtp_to_rcpt PORT: a session up to an accepted RCPT; FD is its descriptor.
smtp_to_rcpt() {
	smtp_open "$1" && smtp_cmd "$FD" "EHLO client.bench.example" 250 &&
		smtp_cmd "$FD" "MAIL FROM:<$FROM>" 250 && smtp_cmd "$FD" "RCPT TO:<$RCPT>" 250
}

# cpu_ns PID...: CPU time (ns, from schedstat) of all threads of the PIDs.
cpu_ns() {
	local p
	for p in "$@"; do cat /proc/"$p"/task/*/schedstat 2>/dev/null; done | awk '{ s += $1 } END { printf "%d\n", s }'
}
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null; }
# private_kib PID...: Private_Clean + Private_Dirty, summed.
private_kib() {
	local p
	for p in "$@"; do cat "/proc/$p/smaps_rollup" 2>/dev/null; done |
		awk '/^Private_(Clean|Dirty):/ { s += $2 } END { printf "%d\n", s }'
}

# ---------------------------------------------------------------------------
# Loads

src() { timeout "$SRC_TIMEOUT" smtp-source -M bench.example -f "$FROM" -t "$RCPT" "$@"; }

# load_sess1 TARGET: SESSIONS sessions of 1 message, CONC at a time.
load_sess1() {
	local t=$1 port before t0 t1
	eval "port=\$PORT_$t"
	before=$(sink_count)
	t0=$(now_us)
	src -s "$CONC" -m "$SESSIONS" "127.0.0.1:$port" >"$OUT/log/source.out" 2>&1 ||
		fail "sess1 $t: smtp-source: $(tail -n 3 "$OUT/log/source.out")"
	t1=$(now_us)
	sink_check "$before" "$SESSIONS" "sess1 $t" || return
	record sess1_rate "$t" "$(awk -v n="$SESSIONS" -v us=$((t1 - t0)) 'BEGIN { printf "%.1f", n * 1e6 / us }')"
}

# load_msg10 TARGET: MSG10_SESSIONS sessions of PER_SESSION messages each,
# CONC workers in parallel each running its share of sessions in turn.
load_msg10() {
	local t=$1 port before t0 t1 w per=$((MSG10_SESSIONS / CONC)) total pids=()
	eval "port=\$PORT_$t"
	total=$((per * CONC * PER_SESSION))
	rm -f "$OUT/log/msg10.fail."*
	before=$(sink_count)
	t0=$(now_us)
	for w in $(seq "$CONC"); do
		(
			for _ in $(seq "$per"); do
				src -s 1 -m "$PER_SESSION" -d "127.0.0.1:$port" >>"$OUT/log/msg10.fail.$w" 2>&1 || exit 1
			done
			rm -f "$OUT/log/msg10.fail.$w"
		) &
		pids+=($!)
	done
	for w in "${pids[@]}"; do wait "$w"; done
	t1=$(now_us)
	if compgen -G "$OUT/log/msg10.fail.*" >/dev/null; then
		fail "msg10 $t: smtp-source: $(cat "$OUT/log/msg10.fail."* | tail -n 3)"
	fi
	sink_check "$before" "$total" "msg10 $t" || return
	record msg10_rate "$t" "$(awk -v n="$total" -v us=$((t1 - t0)) 'BEGIN { printf "%.1f", n * 1e6 / us }')"
}

# load_big TARGET: one BIG_MB message in one session (smtp-source -l), timed
# from connect to the session's end. For nginx also its workers' CPU.
load_big() {
	local t=$1 port before t0 t1 c0=0 c1=0 workers
	eval "port=\$PORT_$t"
	[ "$t" = nginx ] && { workers=$(children "$PID_nginx"); c0=$(cpu_ns $workers); }
	before=$(sink_count)
	t0=$(now_us)
	src -s 1 -m 1 -l $((BIG_MB * 1000000)) "127.0.0.1:$port" >"$OUT/log/source.out" 2>&1 ||
		fail "big $t: smtp-source: $(tail -n 3 "$OUT/log/source.out")"
	t1=$(now_us)
	[ "$t" = nginx ] && c1=$(cpu_ns $workers)
	sink_check "$before" 1 "big $t" || return
	record big_mbps "$t" "$(awk -v mb="$BIG_MB" -v us=$((t1 - t0)) 'BEGIN { printf "%.1f", mb * 1e6 / us }')"
	[ "$t" = nginx ] && record cpu_ms_per_mb nginx "$(awk -v mb="$BIG_MB" -v ns=$((c1 - c0)) 'BEGIN { printf "%.3f", ns / 1e6 / mb }')"
}

# probe TARGET KIND: one session through the bash client to the per-process
# TARGET (floor, deps or willi), with the process's CPU (all threads, schedstat)
# and peak RSS (VmHWM) read just before QUIT. KIND: small, big or huge.
probe() {
	local t=$1 kind=$2 port lpid pid before c0 c1 mb=0 fd
	eval "port=\$PORT_$t lpid=\$PID_$t"
	wait_drain "$lpid"
	before=$(sink_count)
	smtp_to_rcpt "$port" || { fail "probe $t $kind: $SMTP_ERR"; smtp_close "$FD"; return; }
	fd=$FD
	pid=$(pgrep -n -P "$lpid")
	c0=$(cpu_ns "$pid")
	if ! smtp_cmd "$fd" DATA 354; then
		fail "probe $t $kind: $SMTP_ERR"
		smtp_close "$fd"
		return
	fi
	case $kind in
	small) cat "$OUT/data/small.eml" >&"$fd" ;;
	big)
		cat "$OUT/data/small.eml" "$OUT/data/big" >&"$fd"
		mb=$BIG_MB
		;;
	huge)
		cat "$OUT/data/small.eml" >&"$fd"
		for _ in $(seq "$HUGE_REPS"); do cat "$OUT/data/big"; done >&"$fd"
		mb=$((HUGE_REPS * BIG_MB))
		;;
	esac
	if ! smtp_cmd "$fd" . 250; then
		fail "probe $t $kind: $SMTP_ERR"
		smtp_close "$fd"
		return
	fi
	c1=$(cpu_ns "$pid")
	record "hwm_${kind}_kib" "$t" "$(hwm_kib "$pid")"
	if [ "$mb" -gt 0 ]; then
		record "cpu_${kind}_ms_per_mb" "$t" "$(awk -v mb="$mb" -v ns="$c1" 'BEGIN { printf "%.3f", ns / 1e6 / mb }')"
		record "cpu_${kind}_data_ms_per_mb" "$t" "$(awk -v mb="$mb" -v ns=$((c1 - c0)) 'BEGIN { printf "%.3f", ns / 1e6 / mb }')"
	else
		record cpu_session_ms "$t" "$(awk -v ns="$c1" 'BEGIN { printf "%.3f", ns / 1e6 }')"
	fi
	smtp_cmd "$fd" QUIT 221 || fail "probe $t $kind: $SMTP_ERR"
	smtp_close "$fd"
	sink_check "$before" 1 "probe $t $kind"
}

# idle TARGET: IDLE connections held after an accepted RCPT; private memory
# per connection (per process for the per-process targets; for nginx the
# growth of its workers' private memory).
idle() {
	local t=$1 port lpid held=() i fd pids n m0=0 m
	eval "port=\$PORT_$t lpid=\$PID_$t"
	[ "$t" = nginx ] || wait_drain "$lpid"
	[ "$t" = nginx ] && m0=$(private_kib $(children "$PID_nginx"))
	for i in $(seq "$IDLE"); do
		if ! smtp_to_rcpt "$port"; then
			fail "idle $t: connection $i: $SMTP_ERR"
			smtp_close "$FD"
			break
		fi
		held+=("$FD")
	done
	sleep 0.3
	if [ "$t" = nginx ]; then
		m=$(private_kib $(children "$PID_nginx"))
		n=${#held[@]}
		[ "$n" -gt 0 ] && record idle_priv_kib nginx "$(awk -v d=$((m - m0)) -v n="$n" 'BEGIN { printf "%.1f", d / n }')"
	else
		pids=$(children "$lpid")
		n=$(echo "$pids" | grep -c .)
		if [ "$n" -ne "${#held[@]}" ]; then
			fail "idle $t: $n processes for ${#held[@]} connections"
		elif [ "$n" -gt 0 ]; then
			m=$(private_kib $pids)
			record idle_priv_kib "$t" "$(awk -v m="$m" -v n="$n" 'BEGIN { printf "%.1f", m / n }')"
		fi
	fi
	for fd in "${held[@]}"; do printf 'QUIT\r\n' >&"$fd" 2>/dev/null; done
	for fd in "${held[@]}"; do smtp_close "$fd"; done
	[ "$t" = nginx ] || wait_drain "$lpid"
}

# latency TARGET: median connect-to-banner time of LAT_N connections made
# one after another (each ends with QUIT).
latency() {
	local t=$1 port i t0 t1 fd samples=()
	eval "port=\$PORT_$t"
	for i in $(seq "$LAT_N"); do
		t0=$(now_us)
		if ! smtp_open "$port"; then
			fail "latency $t: $SMTP_ERR"
			smtp_close "$FD"
			return
		fi
		t1=$(now_us)
		fd=$FD
		samples+=($((t1 - t0)))
		smtp_cmd "$fd" QUIT 221 || fail "latency $t: $SMTP_ERR"
		smtp_close "$fd"
	done
	record banner_ms "$t" "$(printf '%s\n' "${samples[@]}" | sort -n | awk '{ v[NR] = $1 } END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.3f", m / 1000 }')"
}

# rotate N WORD...: the words rotated left by N (targets take turns going
# first, so drift on a busy machine does not always hit the same one).
rotate() {
	local n=$1
	shift
	local a=("$@") k=${#a[@]}
	for ((i = 0; i < k; i++)); do printf '%s ' "${a[$(((i + n) % k))]}"; done
}

# ---------------------------------------------------------------------------
# The runs

say "runs=$RUNS sessions=$SESSIONS concurrency=$CONC msg10=${MSG10_SESSIONS}x$PER_SESSION big=${BIG_MB}MB idle=$IDLE latency_n=$LAT_N huge=$((HUGE_REPS * BIG_MB))MB xclient=$XCLIENT"
for RUN in $(seq "$RUNS"); do
	say "run $RUN/$RUNS"
	for t in $(rotate "$RUN" direct floor deps pipe willi nginx serve); do latency "$t"; done
	for t in $(rotate "$RUN" direct floor deps pipe willi nginx serve); do
		load_sess1 "$t"
		case $t in floor | deps | pipe | willi | serve) wait_drain "$(eval echo "\$PID_$t")" ;; esac
	done
	for t in $(rotate "$RUN" direct floor deps pipe willi nginx); do load_msg10 "$t"; done
	for _ in $(seq "$BIG_REPS"); do
		for t in $(rotate "$RUN" direct floor pipe willi nginx); do load_big "$t"; done
	done
	for t in floor deps willi; do
		probe "$t" small
		probe "$t" big
	done
	[ "$HUGE_REPS" -gt 0 ] && probe willi huge
	for t in $(rotate "$RUN" floor deps pipe willi nginx); do idle "$t"; done
done

# ---------------------------------------------------------------------------
# The table

awk -F'\t' '
	{ k = $2 "\t" $3; n[k]++; v[k, n[k]] = $4 }
	END {
		for (k in n) {
			c = n[k]
			for (i = 1; i <= c; i++) a[i] = v[k, i] + 0
			for (i = 2; i <= c; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
			med = c % 2 ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2
			printf "%s\t%s\t%s\t%s\t%d\n", k, med, a[1], a[c], c
		}
	}' "$RESULTS" | sort >"$MEDIANS"

# med METRIC TARGET: the median (empty when not measured).
med() { awk -F'\t' -v m="$1" -v t="$2" '$1 == m && $2 == t { print $3 }' "$MEDIANS"; }

COLUMNS="direct floor deps pipe willi serve nginx"
METRICS="sess1_rate|sessions/s, 1 msg/session ($SESSIONS x, $CONC conc.)
msg10_rate|msgs/s, $PER_SESSION msgs/session
big_mbps|MB/s, one $BIG_MB MB message
banner_ms|connect-to-banner ms (median of $LAT_N)
idle_priv_kib|private KiB per idle conn after RCPT
hwm_small_kib|peak RSS KiB, 1-msg session
hwm_big_kib|peak RSS KiB, $BIG_MB MB message
hwm_huge_kib|peak RSS KiB, $((HUGE_REPS * BIG_MB)) MB message
cpu_session_ms|CPU ms, whole 1-msg session
cpu_big_ms_per_mb|CPU ms/MB, $BIG_MB MB (whole process)
cpu_big_data_ms_per_mb|CPU ms/MB, $BIG_MB MB (DATA only)
cpu_huge_data_ms_per_mb|CPU ms/MB, $((HUGE_REPS * BIG_MB)) MB (DATA only)
cpu_ms_per_mb|CPU ms/MB, $BIG_MB MB (nginx workers)"

{
	echo
	echo "willi benchmark: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), $RUNS run(s); median (min-max)"
	printf '%-44s' "metric"
	for t in $COLUMNS; do printf ' %-18s' "$t"; done
	echo
	echo "$METRICS" | while IFS='|' read -r m label; do
		grep -q "^$m	" "$MEDIANS" || continue
		printf '%-44s' "$label"
		for t in $COLUMNS; do
			awk -F'\t' -v m="$m" -v t="$t" '
				function f(x) { return x >= 100 ? sprintf("%.0f", x) : x >= 10 ? sprintf("%.1f", x) : sprintf("%.2f", x) }
				$1 == m && $2 == t { c = f($3); if ($6 > 1) c = c " (" f($4) "-" f($5) ")"; found = 1 }
				END { printf " %-18s", found ? c : "-" }' "$MEDIANS"
		done
		echo
	done
} | tee "$OUT/table.txt"

# goal LABEL VALUE REF OP LIMIT: ratio VALUE/REF (or VALUE itself when REF
# is "-") compared with LIMIT.
MISSES=0
goal() {
	local label=$1 v=$2 ref=$3 op=$4 limit=$5 r verdict
	if [ -z "$v" ] || [ -z "$ref" ]; then
		printf '%-52s %10s %10s %8s %6s %s\n' "$label" "${v:--}" "${ref:--}" "-" "$op$limit" "n/a" | tee -a "$OUT/table.txt"
		return
	fi
	if [ "$ref" = - ]; then r=$v; else r=$(awk -v a="$v" -v b="$ref" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }'); fi
	verdict=$(awk -v r="$r" -v l="$limit" -v op="$op" 'BEGIN { ok = op == ">=" ? r >= l : r <= l; print ok ? "ok" : "MISS" }')
	[ "$verdict" = ok ] || MISSES=$((MISSES + 1))
	printf '%-52s %10s %10s %8s %6s %s\n' "$label" "$v" "$ref" "$r" "$op$limit" "$verdict" | tee -a "$OUT/table.txt"
}
hwm_max() {
	local m
	m=$(printf '%s\n' "$(med hwm_small_kib willi)" "$(med hwm_big_kib willi)" "$(med hwm_huge_kib willi)" | sort -n | tail -n 1)
	[ -n "$m" ] && awk -v k="$m" 'BEGIN { printf "%.2f", k / 1024 }'
}
flat_kib() {
	local small big
	small=$(med hwm_small_kib willi)
	big=$(med hwm_huge_kib willi)
	[ -z "$big" ] && big=$(med hwm_big_kib willi)
	[ -n "$small" ] && [ -n "$big" ] && echo $((${big%.*} - ${small%.*}))
}
{
	echo
	printf '%-52s %10s %10s %8s %6s %s\n' "goal (medians)" "willi" "reference" "ratio" "goal" ""
} | tee -a "$OUT/table.txt"
goal "sessions/s, 1 msg/session: willi / floor" "$(med sess1_rate willi)" "$(med sess1_rate floor)" ">=" 0.9
goal "msgs/s, 10 msgs/session: willi / floor" "$(med msg10_rate willi)" "$(med msg10_rate floor)" ">=" 0.8
goal "$BIG_MB MB throughput: willi / direct" "$(med big_mbps willi)" "$(med big_mbps direct)" ">=" 0.95
goal "CPU ms per MB, $BIG_MB MB message (whole process)" "$(med cpu_big_ms_per_mb willi)" - "<=" 1
goal "private memory per idle conn: willi / floor" "$(med idle_priv_kib willi)" "$(med idle_priv_kib floor)" "<=" 1.2
goal "peak RSS of one willi process, MiB" "$(hwm_max)" - "<=" 6
goal "peak RSS growth with $((HUGE_REPS > 0 ? HUGE_REPS * BIG_MB : BIG_MB)) MB message, KiB" "$(flat_kib)" - "<=" 512
goal "connect-to-banner latency: willi / floor" "$(med banner_ms willi)" "$(med banner_ms floor)" "<=" 1.3
{
	echo
	printf '%-52s %10s %10s %8s\n' "for information" "willi" "reference" "ratio"
} | tee -a "$OUT/table.txt"
info() {
	local r=-
	[ -n "$2" ] && [ -n "$3" ] && r=$(awk -v a="$2" -v b="$3" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')
	printf '%-52s %10s %10s %8s\n' "$1" "${2:--}" "${3:--}" "$r" | tee -a "$OUT/table.txt"
}
info "sessions/s: deps / floor (the named libraries' init)" "$(med sess1_rate deps)" "$(med sess1_rate floor)"
info "sessions/s: pipe / floor (a byte pipe to the sink)" "$(med sess1_rate pipe)" "$(med sess1_rate floor)"
info "sessions/s: willi / pipe" "$(med sess1_rate willi)" "$(med sess1_rate pipe)"
info "msgs/s, 10 msgs/session: pipe / floor" "$(med msg10_rate pipe)" "$(med msg10_rate floor)"
info "msgs/s, 10 msgs/session: willi / pipe" "$(med msg10_rate willi)" "$(med msg10_rate pipe)"
info "private memory per idle conn: deps / floor" "$(med idle_priv_kib deps)" "$(med idle_priv_kib floor)"
info "private memory per idle conn: willi / deps" "$(med idle_priv_kib willi)" "$(med idle_priv_kib deps)"
info "connect-to-banner latency: deps / floor" "$(med banner_ms deps)" "$(med banner_ms floor)"
info "connect-to-banner latency: willi / deps" "$(med banner_ms willi)" "$(med banner_ms deps)"
info "$BIG_MB MB throughput: pipe / direct" "$(med big_mbps pipe)" "$(med big_mbps direct)"
info "sessions/s: willi serve / systemd-socket-activate" "$(med sess1_rate serve)" "$(med sess1_rate willi)"
info "sessions/s: willi / nginx" "$(med sess1_rate willi)" "$(med sess1_rate nginx)"
info "msgs/s, 10 msgs/session: willi / nginx" "$(med msg10_rate willi)" "$(med msg10_rate nginx)"
info "$BIG_MB MB throughput: willi / nginx" "$(med big_mbps willi)" "$(med big_mbps nginx)"
info "CPU ms per MB (DATA only): willi / nginx workers" "$(med cpu_big_data_ms_per_mb willi)" "$(med cpu_ms_per_mb nginx)"
info "banner latency: willi / nginx" "$(med banner_ms willi)" "$(med banner_ms nginx)"

# The container columns, as root (systemd-nspawn).
if [ "$CONTAINER" != 0 ]; then
	cleanup # the host columns' processes are done
	if [ "$(id -u)" -ne 0 ]; then
		say "container columns skipped: they need root (BENCH_CONTAINER=0 says so quietly)"
	else
		echo | tee -a "$OUT/table.txt"
		bash "$HERE/container.sh" | tee -a "$OUT/table.txt"
		[ "${PIPESTATUS[0]}" -eq 0 ] || fail "bench/container.sh failed"
	fi
fi

ELAPSED=$((($(now_us) - START_US) / 1000000))
{
	echo
	if [ "$FAILS" -eq 0 ]; then
		echo "sink: all $SINK_EXPECTED messages received"
	else
		echo "sink/loads: $FAILS failure(s), see above"
	fi
	echo "goals missed: $MISSES; elapsed ${ELAPSED}s; samples in $RESULTS"
} | tee -a "$OUT/table.txt"

[ "$FAILS" -eq 0 ] || exit 1
[ "$STRICT" = 1 ] && [ "$MISSES" -gt 0 ] && exit 2
exit 0
