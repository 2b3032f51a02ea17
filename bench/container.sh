#!/bin/bash
# bench/container.sh: willi under a real systemd, in the booted Debian 12
# test container (test/container.sh), driven over the container's own
# loopback by bench/smtpload. The columns:
#
#   unit    willi.socket + willi@.service (one sandboxed unit per connection)
#   serve   willi-serve.socket + willi-serve.service (one sandboxed willi
#           serve, one willi child per connection)
#   ssa     systemd-socket-activate --accept --inetd running the same binary
#           as user willi, without a sandbox (the reference)
#
# Loads, each column in turn: sessions/s at 1 and at 20 concurrent clients
# (banner, EHLO, one message, QUIT; 20 client addresses so that no
# per-source limit is in play), and 200 clients from 200 addresses
# connecting at once (how many got a banner within 2 s, the slowest);
# systemd-analyze security of both services.
#
# Every load also records the CPU time the container's processes used per
# session (systemd, the units, willi, smtp-sink; not the client, which
# nsenter leaves in the host's cgroup): on a shared machine far steadier
# than sessions/s, which it otherwise mirrors.
#
# With BENCH_SANDBOX=1 also the cost of each sandbox directive of
# willi@.service: CPU time per session at 1 client with the directive
# turned off by a drop-in, against the unit as shipped, in alternation.
#
# Environment: BENCH_OUT=DIR (default bench/out), BENCH_RUNS=N rounds
# (default 3), BENCH_QUICK=1 (fewer sessions), BENCH_SANDBOX=1. Exit 1
# when a session failed.
# Run as root, after test/deps.sh. Prints a table; results in
# $BENCH_OUT/container.tsv (round, metric, column, value).
set -uo pipefail
export LC_ALL=C
export PATH="$PATH:/usr/local/go/bin:/usr/sbin:/sbin"

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
OUT=${BENCH_OUT:-$HERE/out}
RUNS=${BENCH_RUNS:-3}
if [ "${BENCH_QUICK:-0}" = 1 ]; then
	RUNS=${BENCH_RUNS:-1} N1=20 N20=100 NSAND=20
else
	N1=100 N20=600 NSAND=60
fi
CT=willi-bench-$$
RESULTS=$OUT/container.tsv
mkdir -p "$OUT/bin"
: >"$RESULTS"

say() { printf '%s\n' "$*" >&2; }
FAILS=0
fail() {
	say "FAIL: $*"
	FAILS=$((FAILS + 1))
}
die() { say "bench/container: $*"; exit 1; }
ct() { "$ROOT/test/container.sh" run "$CT" "$@"; }
cpu_ns() { "$ROOT/test/container.sh" cpu "$CT"; }
# smtpload_cpu ARGS...: runs smtpload in the container; prints its output
# line with cpu_ms= (container CPU time per session) appended.
smtpload_cpu() {
	local a b out n
	a=$(cpu_ns)
	out=$(ct smtpload "$@")
	local st=$?
	b=$(cpu_ns)
	n=$(sed -n 's/.*sessions=\([0-9]*\).*/\1/p' <<<"$out")
	awk -v o="$out" -v a="$a" -v b="$b" -v n="${n:-0}" 'BEGIN { printf "%s cpu_ms=%.2f\n", o, (n > 0 ? (b - a) / 1e6 / n : 0) }'
	return $st
}
trap '"$ROOT/test/container.sh" stop "$CT" >/dev/null 2>&1' EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || die "run me as root"
say "building the release and smtpload"
(cd "$ROOT" && rm -rf "$OUT/dist" && make -s release DIST="$OUT/dist" >/dev/null) || die "make release failed"
(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -o "$OUT/bin/smtpload" ./bench/smtpload) || die "go build smtpload failed"

say "booting the container"
"$ROOT/test/container.sh" boot "$CT" >/dev/null || die "the container did not boot"
"$ROOT/test/container.sh" install "$CT" "$OUT"/dist/willi-*.tar.gz >/dev/null || die "install.sh failed"
"$ROOT/test/container.sh" put "$CT" "$OUT/bin/smtpload" /usr/local/bin/smtpload
ct sh -ec '
chmod 755 /usr/local/bin/smtpload
cat >/opt/willi/etc/willi.conf <<EOC
hostname = "mx.bench.example"
[[mapping]]
type = "static"
server = "127.0.0.1:2526"
EOC
chgrp willi /opt/willi/etc/willi.conf
chmod 640 /opt/willi/etc/willi.conf
/opt/willi/bin/willi check >/dev/null
systemd-run --quiet --unit=sink /usr/sbin/smtp-sink -u postfix -c 127.0.0.1:2526 5000
systemd-run --quiet --unit=ssa -p User=willi -E GOMAXPROCS=1 \
	/usr/bin/systemd-socket-activate --accept --inetd -l 127.0.0.1:2525 \
	/opt/willi/bin/willi -config /opt/willi/etc/willi.conf
for port in 2525 2526; do
	for i in $(seq 100); do ss -Hltn "sport = :$port" | grep -q . && break; sleep 0.05; done
	ss -Hltn "sport = :$port" | grep -q . || { echo "nothing listens on port $port" >&2; exit 1; }
done
' || die "setting up the container failed"

# use COLUMN: the port that column listens on, its socket started.
use() {
	case $1 in
	unit) ct systemctl start willi.socket; echo 25 ;;
	serve) ct systemctl start willi-serve.socket; echo 25 ;;
	ssa) echo 2525 ;;
	esac
}
# load ROUND COLUMN PORT: the three loads on one column.
field() { sed -n "s/.*\\b$1=\\([0-9.]*\\).*/\\1/p"; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"; }
load() {
	local run=$1 col=$2 port=$3 out
	out=$(smtpload_cpu -addr 127.0.0.1:"$port" -mail -n "$N1" -c 1) || fail "$col c1: $out"
	record "$run" rate_c1 "$col" "$(field rate <<<"$out")"
	record "$run" cpu_ms "$col" "$(field cpu_ms <<<"$out")"
	out=$(smtpload_cpu -addr 127.0.0.1:"$port" -mail -n "$N20" -c 20 -sources 20) || fail "$col c20: $out"
	record "$run" rate_c20 "$col" "$(field rate <<<"$out")"
	sleep 2 # let the sessions of the last load end
	out=$(ct smtpload -addr 127.0.0.1:"$port" -burst 200 -sources 200 -timeout 60s) || fail "$col burst: $out"
	record "$run" burst_within2s "$col" "$(field within2s <<<"$out")"
	record "$run" burst_max_ms "$col" "$(field banner_max_ms <<<"$out")"
	sleep 2
}

for run in $(seq "$RUNS"); do
	for col in ssa unit serve; do
		port=$(use "$col")
		say "round $run: $col"
		load "$run" "$col" "$port"
	done
done
for svc in willi@.service willi-serve.service; do
	score=$(ct systemd-analyze security --no-pager "$svc" 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
	record 0 exposure "$svc" "$score"
done

if [ "${BENCH_SANDBOX:-0}" = 1 ]; then
	# Each directive off (set to what systemd does without it), one at a
	# time, against the unit as shipped, alternating to share the noise.
	ct systemctl start willi.socket
	dropin=/run/systemd/system/willi@.service.d
	off() {
		ct sh -c "mkdir -p $dropin && printf '[Service]\n%s\n' \"\$1\" >$dropin/off.conf && systemctl daemon-reload" sh "$1"
	}
	on() { ct sh -c "rm -rf $dropin && systemctl daemon-reload"; }
	cost() { smtpload_cpu -addr 127.0.0.1:25 -mail -n "$NSAND" -c 1 | field cpu_ms; }
	while IFS='|' read -r name lines; do
		[ -n "$name" ] || continue
		for run in $(seq "$RUNS"); do
			on
			record "$run" sandbox_base "$name" "$(cost)"
			off "$(printf '%b' "$lines")"
			record "$run" sandbox_off "$name" "$(cost)"
		done
		say "sandbox: $name"
	done <<'EOD'
all namespaces and mounts|ProtectSystem=no\nProtectHome=no\nPrivateTmp=no\nPrivateDevices=no\nPrivateUsers=no\nPrivateIPC=no\nPrivateMounts=no\nProtectHostname=no\nProtectClock=no\nProtectKernelTunables=no\nProtectKernelModules=no\nProtectKernelLogs=no\nProtectControlGroups=no\nProtectProc=default\nProcSubset=all\nCacheDirectory=
ProtectSystem|ProtectSystem=no
ProtectHome|ProtectHome=no
PrivateTmp|PrivateTmp=no
PrivateDevices|PrivateDevices=no
PrivateUsers|PrivateUsers=no
PrivateIPC|PrivateIPC=no
PrivateMounts|PrivateMounts=no
ProtectHostname|ProtectHostname=no
ProtectClock|ProtectClock=no
ProtectKernelTunables|ProtectKernelTunables=no
ProtectKernelModules|ProtectKernelModules=no
ProtectKernelLogs|ProtectKernelLogs=no
ProtectControlGroups|ProtectControlGroups=no
ProtectSystem, ProtectHome, PrivateTmp, ProtectKernelTunables, ProtectControlGroups|ProtectSystem=no\nProtectHome=no\nPrivateTmp=no\nProtectKernelTunables=no\nProtectControlGroups=no
ProtectProc, ProcSubset|ProtectProc=default\nProcSubset=all
CacheDirectory|CacheDirectory=
SystemCallFilter|SystemCallFilter=\nSystemCallArchitectures=
NoNewPrivileges, CapabilityBoundingSet|NoNewPrivileges=no\nCapabilityBoundingSet=~\nAmbientCapabilities=
LockPersonality, RestrictRealtime, RestrictSUIDSGID|LockPersonality=no\nRestrictRealtime=no\nRestrictSUIDSGID=no
UMask, LimitNOFILE, LimitCORE, RuntimeMaxSec|RuntimeMaxSec=infinity\nLimitNOFILE=\nLimitCORE=
RestrictAddressFamilies|RestrictAddressFamilies=
RestrictNamespaces|RestrictNamespaces=no
MemoryDenyWriteExecute|MemoryDenyWriteExecute=no
MemoryMax, TasksMax|MemoryMax=infinity\nTasksMax=infinity
StandardOutput/Error=journal|StandardOutput=null\nStandardError=null
EOD
	on
fi

# The table: medians over the rounds.
awk -F'\t' '
	{ k = $2 "\t" $3; v[k] = v[k] " " $4; if (!(k in seen)) { seen[k] = 1; keys[++n] = k } }
	function median(s,   a, m, i, j, t) {
		m = split(s, a, " ")
		for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
		return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
	}
	END {
		for (i = 1; i <= n; i++) { split(keys[i], p, "\t"); med[p[1], p[2]] = median(v[keys[i]]) }
		printf "%-34s %10s %10s %10s\n", "container (medians)", "ssa", "unit", "serve"
		split("rate_c1 cpu_ms rate_c20 burst_within2s burst_max_ms", ms, " ")
		label["rate_c1"] = "sessions/s, 1 client"; label["rate_c20"] = "sessions/s, 20 clients"
		label["cpu_ms"] = "CPU ms per session, 1 client"
		label["burst_within2s"] = "of 200 at once: banner <= 2 s"; label["burst_max_ms"] = "of 200 at once: slowest banner ms"
		for (j = 1; j <= 5; j++) printf "%-34s %10s %10s %10s\n", label[ms[j]], med[ms[j], "ssa"], med[ms[j], "unit"], med[ms[j], "serve"]
		if (med["rate_c20", "ssa"] > 0) printf "%-34s %10s %10.2f %10.2f\n", "20 clients, ratio to ssa", "1", med["rate_c20", "unit"] / med["rate_c20", "ssa"], med["rate_c20", "serve"] / med["rate_c20", "ssa"]
		printf "%-34s %10s %10s %10s\n", "systemd-analyze security", "-", med["exposure", "willi@.service"], med["exposure", "willi-serve.service"]
		hdr = 0
		for (i = 1; i <= n; i++) {
			split(keys[i], p, "\t")
			if (p[1] != "sandbox_base") continue
			if (!hdr) { printf "\n%-58s %10s %10s %10s\n", "willi@.service, CPU ms per session, 1 client", "as shipped", "off", "cost"; hdr = 1 }
			b = med["sandbox_base", p[2]]; o = med["sandbox_off", p[2]]
			printf "%-58s %10s %10s %10.1f\n", p[2], b, o, b - o
		}
	}' "$RESULTS"

[ "$FAILS" -eq 0 ] || { say "bench/container: $FAILS load(s) failed"; exit 1; }
