#!/bin/bash
# bench/csv.sh: what routing one recipient through a CSV mapping costs a
# whole willi process (fork, exec, runtime start, config, lookup, exit), at
# 1 000, 1 000 000 and 10 000 000 rows, for a hit and a miss, with the index
# current and stale, as `willi lookup` with GOMAXPROCS=1 (as willi@.service
# runs a session). Prints medians and the ratio to the same case at 1 000
# rows; the goal: with a current index, 1M and 10M rows cost at most 1.2x
# 1 000 rows. Also the rebuild time at each size.
#
#   index current   the index matches the CSV: one indexed lookup
#   index stale     the CSV was replaced since the index was built and another
#                   process holds the rebuild lock (flock(1) here): the
#                   lookup scans the whole file, as every process does until
#                   the rebuild is in place
#   rebuild         a lookup that finds the index missing, scans, answers and
#                   rebuilds (temporary file, fsync, rename) before it exits,
#                   less the same lookup's scan alone
#
# The CSV files are generated in a temporary folder (BENCH_CSV_DIR, default
# under /tmp; 10M rows take about 600 MB and their index 1 GB) and removed
# at the end. Environment: BENCH_CSV_SIZES (default "1000 1000000 10000000"),
# BENCH_CSV_RUNS (runs per fast case, default 31).
set -euo pipefail
export LC_ALL=C
export PATH="$PATH:/usr/local/go/bin"
HERE=$(cd "$(dirname "$0")" && pwd)
SIZES=${BENCH_CSV_SIZES:-1000 1000000 10000000}
RUNS=${BENCH_CSV_RUNS:-31}
WORK=$(mktemp -d "${BENCH_CSV_DIR:-/tmp}/willi-csv-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

for tool in flock awk; do
	command -v "$tool" >/dev/null || { echo "bench/csv.sh needs $tool" >&2; exit 1; }
done
(cd "$HERE/.." && CGO_ENABLED=0 go build -trimpath -o "$WORK/willi" .)
WILLI=$WORK/willi
export GOMAXPROCS=1

# gen N FILE: N rows; every tenth a domain route, the others address routes
# (the layout of csv_test.go's genRoutes).
gen() {
	awk -v n="$1" 'BEGIN {
		print "pattern,server"
		for (i = 0; i < n; i++)
			if (i % 10 == 0) printf "d%d.example,mx%d.internal:25\n", i / 10, i % 7
			else printf "user%d@d%d.example,mx%d.internal:2525 backup.internal\n", i, int(i / 10), i % 7
	}' >"$2"
}

# measure RUNS CMD...: median wall ms and mean CPU ms (user+sys) of RUNS runs.
measure() {
	local runs=$1 walls=() t0 t1
	shift
	times >"$WORK/times0"
	for ((i = 0; i < runs; i++)); do
		t0=${EPOCHREALTIME/./}
		"$@" >/dev/null 2>&1 || true
		t1=${EPOCHREALTIME/./}
		walls+=($((t1 - t0)))
	done
	times >"$WORK/times1"
	local median
	median=$(printf '%s\n' "${walls[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
	printf '%.2f %.2f\n' "$(awk -v w="$median" 'BEGIN { print w / 1000 }')" \
		"$(awk -v n="$runs" "$CPU_MS"' FNR == 2 { t += (FILENAME ~ /1$/ ? 1 : -1) * (ms($1) + ms($2)) } END { print t / n }' "$WORK/times0" "$WORK/times1")"
}

# CPU_MS: an awk function turning times(1)'s "1m2.345s" into ms; `times`
# shows this shell's finished children on its second line.
CPU_MS='function ms(v, p) { split(v, p, /[ms]/); return (p[1] * 60 + p[2]) * 1000 }'

declare -A WALL CPU
row() { # row SIZE CASE WALL CPU
	WALL[$1,$2]=$3
	CPU[$1,$2]=$4
}

MISS=nobody@nowhere.example
hit() { echo "user$(($1 - 1))@d$((($1 - 1) / 10)).example"; }
conf() { echo "$WORK/$1/willi.conf"; }

# Every size's CSV and index first.
for n in $SIZES; do
	d=$WORK/$n
	mkdir -p "$d/cache"
	gen "$n" "$d/routes.csv"
	printf 'hostname = "mx.test"\nindex_dir = "cache"\n[[mapping]]\ntype = "csv"\nfile = "routes.csv"\n' >"$(conf "$n")"
	"$WILLI" lookup -config "$(conf "$n")" "$MISS" >/dev/null || true # builds the index
	"$WILLI" lookup -config "$(conf "$n")" "$(hit "$n")" | grep -q 'from index)$' || { echo "$n: not answered from the index" >&2; exit 1; }
done

# Index current: the sizes take turns, run by run, so that a change in the
# machine's load hits them alike.
for c in hit miss; do
	for ((r = 0; r < RUNS; r++)); do
		for n in $SIZES; do
			addr=$MISS
			[ "$c" = hit ] && addr=$(hit "$n")
			read -r w cpu < <(measure 1 "$WILLI" lookup -config "$(conf "$n")" "$addr")
			echo "$w $cpu" >>"$WORK/$n.$c"
		done
	done
	for n in $SIZES; do
		row "$n" "index current, $c" "$(sort -n "$WORK/$n.$c" | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')" \
			"$(awk '{ t += $2 } END { printf "%.2f", t / NR }' "$WORK/$n.$c")"
	done
done

for n in $SIZES; do
	d=$WORK/$n
	lock=$(ls "$d"/cache/*.lock)
	slow=$((n >= 1000000 ? (n >= 10000000 ? 3 : 7) : RUNS))
	# Stale: the CSV replaced by a copy (a new inode), the lock held.
	cp "$d/routes.csv" "$d/routes.csv.new" && mv "$d/routes.csv.new" "$d/routes.csv"
	flock "$lock" "$WILLI" lookup -config "$(conf "$n")" "$(hit "$n")" | grep -q 'by scan: index stale, another process' || { echo "$n: stale index not seen" >&2; exit 1; }
	read -r w c < <(measure "$slow" flock "$lock" "$WILLI" lookup -config "$(conf "$n")" "$(hit "$n")")
	row "$n" "index stale, hit" "$w" "$c"
	read -r w c < <(measure "$slow" flock "$lock" "$WILLI" lookup -config "$(conf "$n")" "$MISS")
	row "$n" "index stale, miss" "$w" "$c"

	# Rebuild: the lookup that finds no index scans, answers, rebuilds.
	sleep 1.1 # past the racy window of the replaced file's change time
	rm -f "$d"/cache/*.idx
	read -r w c < <(measure 1 "$WILLI" lookup -config "$(conf "$n")" "$MISS")
	row "$n" "rebuild (lookup + rebuild)" "$w" "$c"
	"$WILLI" lookup -config "$(conf "$n")" "$(hit "$n")" | grep -q 'from index)$' || { echo "$n: index not rebuilt" >&2; exit 1; }
	rm -rf "$d/routes.csv" "$d/cache"
done

first=${SIZES%% *}
printf 'willi CSV lookup benchmark: %s, %s CPUs, load average %s, GOMAXPROCS=1\n' \
	"$(date -u '+%Y-%m-%d %H:%M UTC')" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf 'whole process (willi lookup): median wall ms of %d runs (index current: the sizes in turn; stale: 7 runs at 1M, 3 at 10M; rebuild: 1), mean CPU ms\n' "$RUNS"
printf '%-10s %-28s %10s %10s %12s %12s\n' rows case "wall ms" "CPU ms" "wall vs $first" "CPU vs $first"
for n in $SIZES; do
	for c in "index current, hit" "index current, miss" "index stale, hit" "index stale, miss" "rebuild (lookup + rebuild)"; do
		printf '%-10s %-28s %10s %10s %12s %12s\n' "$n" "$c" "${WALL[$n,$c]}" "${CPU[$n,$c]}" \
			"$(awk -v a="${WALL[$n,$c]}" -v b="${WALL[$first,$c]}" 'BEGIN { printf "%.2f", a / b }')" \
			"$(awk -v a="${CPU[$n,$c]}" -v b="${CPU[$first,$c]}" 'BEGIN { printf "%.2f", a / b }')"
	done
done
echo
echo "goal: index current at 1M and 10M rows <= 1.2x the cost at $first rows (median wall; mean CPU beside it)"
for n in $SIZES; do
	[ "$n" = "$first" ] && continue
	for c in "index current, hit" "index current, miss"; do
		awk -v n="$n" -v c="$c" -v a="${WALL[$n,$c]}" -v b="${WALL[$first,$c]}" -v ca="${CPU[$n,$c]}" -v cb="${CPU[$first,$c]}" \
			'BEGIN { r = a / b; printf "%-10s %-28s wall %5.2f %-5s CPU %5.2f\n", n, c, r, r <= 1.2 ? "ok" : "MISS", ca / cb }'
	done
done
for n in $SIZES; do
	awk -v n="$n" -v a="${WALL[$n,rebuild (lookup + rebuild)]}" -v s="${WALL[$n,index stale, miss]}" \
		'BEGIN { printf "rebuild of %d rows: %.2f s (lookup and rebuild %.2f s less the scan %.2f s)%s\n", n, (a - s) / 1000, a / 1000, s / 1000, n == 1000000 ? ((a - s) <= 5000 ? "  goal <= 5 s: ok" : "  goal <= 5 s: MISS") : "" }'
done
