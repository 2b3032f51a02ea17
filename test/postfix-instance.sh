#!/bin/sh
# test/postfix-instance.sh DIR [LISTENER...]: lays out a private Postfix
# instance in the folder DIR (the tests' upstreams and senders,
# bench/tls-setup.sh): DIR/etc, queue, data and mail (data and mail owned by
# postfix), DIR/etc/main.cf with what every private instance sets (its
# folders, loopback only, no DNS, no local delivery, log to DIR/maillog,
# virtual mailboxes under DIR/mail) and DIR/etc/master.cf: the services of
# the postfix package's own master.cf with no chroot (a private instance has
# no chroot tree) and without the system's smtpd on port 25, then one line
# per LISTENER, such as "127.0.0.1:2525 inet n - n - - smtpd". The caller
# appends its role's settings (myhostname, relayhost, mailbox maps, TLS) to
# main.cf, then starts the instance with postfix -c DIR/etc start.
set -eu
export PATH="$PATH:/usr/sbin:/sbin"
dist=/usr/share/postfix/master.cf.dist
[ -f "$dist" ] || { echo "$0: $dist missing; install the test suite's peers with: sudo test/deps.sh" >&2; exit 1; }
dir=$1
shift
mkdir -p "$dir/etc" "$dir/queue" "$dir/data" "$dir/mail"
chmod 755 "$dir"
chown postfix:postfix "$dir/data" "$dir/mail"
cat >"$dir/etc/main.cf" <<EOC
# Private Postfix instance for willi's tests and benchmarks.
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_recipient_maps =
maillog_file = $dir/maillog
maillog_file_prefixes = $dir
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
biff = no
message_size_limit = 0
virtual_mailbox_limit = 0
virtual_mailbox_base = $dir/mail
virtual_uid_maps = static:$(id -u postfix)
virtual_gid_maps = static:$(id -g postfix)
EOC
cp "$dist" "$dir/etc/master.cf"
postconf -c "$dir/etc" -F -e '*/*/chroot = n'
postconf -c "$dir/etc" -MX smtp/inet
for listener in "$@"; do
	printf '%s\n' "$listener" >>"$dir/etc/master.cf"
done
