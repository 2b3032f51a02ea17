#!/bin/bash
# test/container.sh: the systemd test bed. Boots the Debian 12 root that
# test/deps.sh built (systemd as PID 1, private network: only the
# container's own loopback) on a throw-away overlay, runs commands in it,
# installs a release tarball the way the README says, and stops it.
#
#   test/container.sh boot NAME          boot; prints the container's PID 1
#   test/container.sh run NAME CMD...    run CMD inside (stdin passed on)
#   test/container.sh put NAME FILE DEST copy FILE to DEST inside
#   test/container.sh install NAME TARBALL
#                                        unpack TARBALL and run its install.sh
#   test/container.sh cpu NAME           CPU time used in it so far, in ns
#   test/container.sh stop NAME          power off and clean up
#
# The host needs no systemd: systemd-nspawn runs from a process moved first
# into cgroups of its own (NAME under the v2 and the named v1 hierarchy,
# which systemd inside takes over). Must run as root.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

ROOT=${WILLI_TEST_ROOT:-${WILLI_TEST_CACHE:-/var/cache/willi-test}/root}
STATE=/run/willi-test

die() { echo "container.sh: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: $0 boot|run|put|install|stop NAME ..."
cmd=$1 name=$2
shift 2
case $name in *[!A-Za-z0-9_-]* | "") die "bad container name: $name" ;; esac
dir=$STATE/$name

# The cgroup folders of the container: v2 (unified, or the whole tree), the
# v1 name=systemd hierarchy, v1 cpuacct (to count its CPU time), and v1
# memory and pids below this process's own (the container's units get
# their MemoryMax= and TasksMax= there, apart from other containers').
cgroups() {
	for h in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd /sys/fs/cgroup /sys/fs/cgroup/cpuacct; do
		if [ -f "$h/cgroup.procs" ] && ! [ -d "$h/unified" ]; then echo "$h/$name"; fi
	done | awk '!seen[$0]++'
	for c in memory pids; do
		own=$(awk -F: -v c="$c" '$2 == c { print $3 }' /proc/self/cgroup)
		if [ -n "$own" ] && [ -f "/sys/fs/cgroup/$c/cgroup.procs" ]; then echo "/sys/fs/cgroup/$c${own%/}/$name"; fi
	done
}

leader() { cat "$dir/leader" 2>/dev/null || die "$name is not running"; }

in_ct() { nsenter -t "$(leader)" -m -u -i -n -p -- "$@"; }

case $cmd in
boot)
	[ -f "$ROOT/.willi-test-root" ] || die "no container root at $ROOT (run test/deps.sh as root)"
	[ ! -e "$dir/nspawn.pid" ] || die "$name is already running"
	mkdir -p "$dir"
	for cg in $(cgroups); do mkdir -p "$cg"; done
	# The PID of the shell that moves itself into the cgroups and then
	# becomes systemd-nspawn.
	# shellcheck disable=SC2016
	setsid sh -c 'name=$1 root=$2; shift 2
		for cg in "$@"; do echo $$ >"$cg/cgroup.procs"; done
		exec systemd-nspawn --quiet --register=no --keep-unit --private-network \
			--volatile=overlay --console=passive -M "$name" -D "$root" -b' \
		sh "$name" "$ROOT" $(cgroups) </dev/null >"$dir/console.log" 2>&1 &
	echo $! >"$dir/nspawn.pid"
	nspawn=$!
	# PID 1 of the container: the descendant of systemd-nspawn that is
	# PID 1 in its own PID namespace (NSpid ends in 1), once it runs systemd.
	for _ in $(seq 200); do
		for pid in $(pgrep -P "$nspawn" 2>/dev/null) $(pgrep -P "$(pgrep -P "$nspawn" 2>/dev/null | head -n 1)" 2>/dev/null); do
			nspid=$(awk '$1 == "NSpid:" { print $NF }' "/proc/$pid/status" 2>/dev/null || true)
			if [ "$nspid" = 1 ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" != "$(readlink "/proc/$nspawn/exe" 2>/dev/null)" ]; then
				echo "$pid" >"$dir/leader"
				break 2
			fi
		done
		kill -0 "$nspawn" 2>/dev/null || { cat "$dir/console.log" >&2; die "systemd-nspawn exited"; }
		sleep 0.05
	done
	[ -f "$dir/leader" ] || die "no PID 1 in $name"
	# Until systemd reports running (degraded is a failure of the bed).
	state=""
	for _ in $(seq 300); do
		state=$(in_ct systemctl is-system-running 2>/dev/null || true)
		case $state in running) break ;; degraded) break ;; esac
		sleep 0.1
	done
	if [ "$state" != running ]; then
		in_ct systemctl --failed --no-pager >&2 || true
		die "$name did not reach running (state: ${state:-none})"
	fi
	# On a v1 cgroup host systemd-nspawn mounts the memory and pids
	# hierarchies read-only, and systemd then enforces no MemoryMax= or
	# TasksMax=. Writable, and systemd re-executed to see them, each unit
	# gets its limits as on a real machine.
	ro=""
	for c in memory pids; do
		if in_ct findmnt -n -o OPTIONS "/sys/fs/cgroup/$c" 2>/dev/null | grep -q '^ro'; then
			nsenter -t "$(leader)" -m -- mount -o remount,bind,rw "/sys/fs/cgroup/$c" || die "cannot make /sys/fs/cgroup/$c writable"
			ro=1
		fi
	done
	if [ -n "$ro" ]; then
		in_ct systemctl daemon-reexec
		for _ in $(seq 300); do
			state=$(in_ct systemctl is-system-running 2>/dev/null || true)
			[ "$state" = running ] && break
			sleep 0.1
		done
		[ "$state" = running ] || die "$name did not come back after daemon-reexec (state: ${state:-none})"
	fi
	leader
	;;
run)
	in_ct "$@"
	;;
put)
	[ $# -eq 2 ] || die "usage: put NAME FILE DEST"
	in_ct sh -c 'cat >"$1"' sh "$2" <"$1"
	;;
install)
	[ $# -eq 1 ] || die "usage: install NAME TARBALL"
	in_ct sh -c 'cat >/root/willi.tar.gz' <"$1"
	# As the README's Install section says.
	in_ct sh -ec 'cd /root && tar xzf willi.tar.gz && cd willi-*/ && ./install.sh'
	;;
cpu)
	if [ -f "/sys/fs/cgroup/cpuacct/$name/cpuacct.usage" ]; then
		cat "/sys/fs/cgroup/cpuacct/$name/cpuacct.usage"
	else
		for cg in $(cgroups); do
			if [ -f "$cg/cpu.stat" ]; then
				awk '$1 == "usage_usec" { printf "%d000\n", $2; exit }' "$cg/cpu.stat"
				exit 0
			fi
		done
		die "no CPU accounting for $name"
	fi
	;;
stop)
	if [ -f "$dir/nspawn.pid" ]; then
		nspawn=$(cat "$dir/nspawn.pid")
		# SIGTERM: systemd-nspawn asks systemd inside to power off.
		kill "$nspawn" 2>/dev/null || true
		for _ in $(seq 100); do kill -0 "$nspawn" 2>/dev/null || break; sleep 0.1; done
		if kill -0 "$nspawn" 2>/dev/null; then
			kill -9 "$nspawn" 2>/dev/null || true
			for cg in $(cgroups); do
				[ -d "$cg" ] || continue
				find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null || true
			done
			sleep 0.5
		fi
	fi
	for cg in $(cgroups); do
		[ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
	done
	rm -rf "$dir"
	;;
*)
	die "unknown command $cmd"
	;;
esac
