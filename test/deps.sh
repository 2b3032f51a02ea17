#!/bin/sh
# Installs everything willi's test suite needs (Debian 12), idempotently.
# Fast when all is present: only queries dpkg. Must run as root.
set -eu

PACKAGES="postfix swaks libnet-ssleay-perl libio-socket-ssl-perl python3 mariadb-server mariadb-client xinetd ucspi-tcp
haproxy nginx libnginx-mod-mail openssl systemd procps make git ca-certificates
util-linux libidn12 libgnutls-dane0 libgnutls30 libdb5.3 libpcre2-8-0 libnsl2 libcrypt1
systemd-container debootstrap"

missing=""
for p in $PACKAGES; do
	status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	case "$status" in
	*" ok installed") ;;
	*) missing="$missing $p" ;;
	esac
done

if [ -n "$missing" ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "test/deps.sh: missing packages:$missing (run as root to install)" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	# Postfix must install without asking and without a configuration of its
	# own: the tests run private instances with their own config directories.
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	echo "postfix postfix/mailname string localhost" | debconf-set-selections
	# Keep package scripts from starting the distro's services.
	policy_rc=/usr/sbin/policy-rc.d
	created_policy=""
	if [ ! -e "$policy_rc" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy_rc"
		chmod 755 "$policy_rc"
		created_policy=1
	fi
	apt-get update -q
	# shellcheck disable=SC2086
	apt-get install -y -q --no-install-recommends $missing
	if [ -n "$created_policy" ]; then
		rm -f "$policy_rc"
	fi
fi

# The distro's own instances would hold ports and state the tests do not
# expect; the tests start private instances on free loopback ports.
for svc in postfix mariadb haproxy nginx xinetd; do
	if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
		systemctl disable --now "$svc" >/dev/null 2>&1 || true
	fi
	if [ -x "/etc/init.d/$svc" ]; then
		"/etc/init.d/$svc" stop >/dev/null 2>&1 || true
	fi
done
# A default Postfix instance, if one was configured, must not be running.
if [ -f /etc/postfix/main.cf ] && postfix status >/dev/null 2>&1; then
	postfix stop >/dev/null 2>&1 || true
fi

for prog in /usr/sbin/smtp-sink /usr/sbin/postfix /usr/bin/swaks /usr/bin/python3 \
	/usr/bin/systemd-socket-activate /usr/bin/tcpserver /usr/sbin/haproxy \
	/usr/sbin/xinetd /usr/sbin/nginx /usr/bin/openssl /usr/sbin/mariadbd \
	/usr/bin/systemd-nspawn /usr/bin/nsenter /usr/sbin/debootstrap; do
	if [ ! -x "$prog" ]; then
		echo "test/deps.sh: $prog is still missing" >&2
		exit 1
	fi
done
# swaks --tls needs Net::SSLeay, which apt only recommends.
if ! swaks --support 2>&1 | grep -q '^=== TLS supported'; then
	echo "test/deps.sh: swaks has no TLS support (Net::SSLeay missing)" >&2
	exit 1
fi

# Exim 4 as a second real sending MTA, without replacing Postfix (Debian's
# MTAs conflict): its packages are downloaded and extracted into a private
# folder, not installed. The tests run it with their own configuration in a
# private mount namespace whose /etc/passwd and /etc/group add the
# Debian-exim user the binary is built for. The libraries it links are
# installed above.
EXIM_ROOT=${WILLI_EXIM_ROOT:-/var/cache/willi-test/exim4}
EXIM_PACKAGES="exim4-daemon-light exim4-base exim4-config"
exim_ok() {
	[ -x "$EXIM_ROOT/usr/sbin/exim4" ] && ! ldd "$EXIM_ROOT/usr/sbin/exim4" 2>/dev/null | grep -q 'not found'
}
if ! exim_ok; then
	if [ "$(id -u)" != 0 ]; then
		echo "test/deps.sh: Exim is not extracted in $EXIM_ROOT (run as root)" >&2
		exit 1
	fi
	dl=$(mktemp -d)
	# apt-get download writes into the current folder, as user _apt when
	# it can: the folder must be theirs to write.
	chown _apt "$dl" 2>/dev/null || true
	if ! (cd "$dl" && apt-get download $EXIM_PACKAGES >/dev/null 2>&1); then
		apt-get update -q >/dev/null
		(cd "$dl" && apt-get download $EXIM_PACKAGES >/dev/null)
	fi
	rm -rf "$EXIM_ROOT.new"
	mkdir -p "$EXIM_ROOT.new"
	for deb in "$dl"/*.deb; do
		dpkg -x "$deb" "$EXIM_ROOT.new"
	done
	rm -rf "$dl" "$EXIM_ROOT"
	mv "$EXIM_ROOT.new" "$EXIM_ROOT"
	if ! exim_ok; then
		echo "test/deps.sh: $EXIM_ROOT/usr/sbin/exim4 is missing or lacks libraries:" >&2
		ldd "$EXIM_ROOT/usr/sbin/exim4" | grep 'not found' >&2 || true
		exit 1
	fi
fi
for prog in /usr/bin/unshare /usr/bin/mount /usr/sbin/postqueue; do
	if [ ! -x "$prog" ]; then
		echo "test/deps.sh: $prog is missing" >&2
		exit 1
	fi
done

# The systemd test bed: a Debian 12 root that the container tests boot with
# systemd-nspawn (test/container_test.go), each run on a throw-away overlay.
# Built once (about 2 min, 440 MiB) under /var/cache/willi-test and rebuilt
# only when ROOT_PACKAGES or ROOT_RECIPE change. postfix is there for
# smtp-sink (the upstream) and smtp-source; its own service is disabled.
ROOT_PACKAGES="systemd,systemd-sysv,dbus,postfix,procps,iproute2,libpam-systemd"
ROOT_RECIPE=1
ROOT_CACHE=${WILLI_TEST_CACHE:-/var/cache/willi-test}
root_key=$(printf '%s %s\n' "$ROOT_PACKAGES" "$ROOT_RECIPE" | sha256sum | cut -c1-12)
root_dir=$ROOT_CACHE/root-$root_key

# The Debian mirror apt is configured with (deb822 or one-line format).
debian_mirror() {
	awk '
		/^URIs:/ { uris = $2 }
		/^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "bookworm") ok = 1 }
		/^$/ { if (ok && uris != "") { print uris; exit } ok = 0; uris = "" }
		$1 == "deb" && $3 == "bookworm" { print $2; exit }
		END { if (ok && uris != "") print uris }
	' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -n 1
}

if [ ! -f "$root_dir/.willi-test-root" ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "test/deps.sh: the container root $root_dir is missing (run as root to build it)" >&2
		exit 1
	fi
	mirror=$(debian_mirror)
	mirror=${mirror:-http://deb.debian.org/debian}
	echo "test/deps.sh: building the container root $root_dir from $mirror"
	mkdir -p "$ROOT_CACHE"
	rm -rf "$root_dir.tmp"
	debootstrap --variant=minbase --include="$ROOT_PACKAGES" bookworm "$root_dir.tmp" "$mirror" >"$ROOT_CACHE/debootstrap.log" 2>&1 || {
		tail -n 30 "$ROOT_CACHE/debootstrap.log" >&2
		echo "test/deps.sh: debootstrap failed (log: $ROOT_CACHE/debootstrap.log)" >&2
		exit 1
	}
	# Boot fast and quietly; nothing but the tests may listen on port 25.
	chroot "$root_dir.tmp" systemctl disable postfix.service >/dev/null 2>&1 || true
	for unit in postfix.service getty@tty1.service console-getty.service \
		systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer \
		e2scrub_all.timer e2scrub_reap.service fstrim.timer man-db.timer dpkg-db-backup.timer; do
		ln -sfn /dev/null "$root_dir.tmp/etc/systemd/system/$unit"
	done
	echo willi-test >"$root_dir.tmp/etc/hostname"
	printf '127.0.0.1 localhost willi-test\n::1 localhost\n' >"$root_dir.tmp/etc/hosts"
	rm -rf "$root_dir.tmp/var/cache/apt/archives/"*.deb "$root_dir.tmp/var/lib/apt/lists/"*
	touch "$root_dir.tmp/.willi-test-root"
	# Older roots (another package list) go; the new one appears whole.
	for old in "$ROOT_CACHE"/root-*; do
		[ -d "$old" ] && [ "$old" != "$root_dir.tmp" ] && rm -rf "$old"
	done
	mv "$root_dir.tmp" "$root_dir"
fi
ln -sfn "$(basename "$root_dir")" "$ROOT_CACHE/root.new" && mv -T "$ROOT_CACHE/root.new" "$ROOT_CACHE/root"
