#!/bin/sh
# test/postfix-master-cf.sh CONFIG_DIR [LISTENER...]: writes CONFIG_DIR/master.cf
# for a private Postfix instance (the tests' upstreams and senders,
# bench/tls-setup.sh): the services of the postfix package's own master.cf
# with no chroot (a private instance has no chroot tree) and without the
# system's smtpd on port 25, then one line per LISTENER, such as
# "127.0.0.1:2525 inet n - n - - smtpd". CONFIG_DIR/main.cf must exist:
# postconf reads it.
set -eu
export PATH="$PATH:/usr/sbin:/sbin"
dist=/usr/share/postfix/master.cf.dist
[ -f "$dist" ] || { echo "$0: $dist missing; install the test suite's peers with: sudo test/deps.sh" >&2; exit 1; }
dir=$1
shift
cp "$dist" "$dir/master.cf"
postconf -c "$dir" -F -e '*/*/chroot = n'
postconf -c "$dir" -MX smtp/inet
for listener in "$@"; do
	printf '%s\n' "$listener" >>"$dir/master.cf"
done
