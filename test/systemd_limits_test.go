package test

// The units' MemoryMax= and TasksMax= under a systemd that enforces them
// (test/container.sh gives the container its memory and pids controllers):
// the limits are in force, the load the README promises fits in them with
// the figures logged, and willi serve at its TasksMax refuses connections
// with a 421 and keeps serving.

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// unitLimits is what the kernel enforces for a unit: its cgroup's memory
// limit and task limit ("max" when none), and their current use.
type unitLimits struct {
	memoryMax, tasksMax, memoryNow, tasksNow string
}

// cgroupScript prints a unit's cgroup limits and use, v1 (memory and pids
// hierarchies) or v2, as "memoryMax tasksMax memoryNow tasksNow".
const cgroupScript = `cg=$(systemctl show -p ControlGroup --value "$1")
if [ -d /sys/fs/cgroup/memory ]; then
	m=/sys/fs/cgroup/memory$cg p=/sys/fs/cgroup/pids$cg
	echo "$(cat $m/memory.limit_in_bytes) $(cat $p/pids.max) $(cat $m/memory.usage_in_bytes) $(cat $p/pids.current)"
else
	echo "$(cat /sys/fs/cgroup$cg/memory.max) $(cat /sys/fs/cgroup$cg/pids.max) $(cat /sys/fs/cgroup$cg/memory.current) $(cat /sys/fs/cgroup$cg/pids.current)"
fi`

// limits reads what the kernel enforces for a running unit.
func (c *container) limits(unit string) unitLimits {
	c.t.Helper()
	f := strings.Fields(c.sh(fmt.Sprintf("set -- %s\n%s", unit, cgroupScript)))
	if len(f) != 4 {
		c.t.Fatalf("cgroup of %s: %q", unit, f)
	}
	return unitLimits{f[0], f[1], f[2], f[3]}
}

// wantLimits checks that the unit's MemoryMax= and TasksMax= are enforced.
func (c *container) wantLimits(unit string, l unitLimits) {
	c.t.Helper()
	set := c.sh("systemctl show -p MemoryMax -p TasksMax --value " + unit)
	f := strings.Fields(set)
	if len(f) != 2 || f[0] == "infinity" || f[1] == "infinity" {
		c.t.Fatalf("%s sets no MemoryMax= and TasksMax=: %q", unit, set)
	}
	if l.memoryMax != f[0] || l.tasksMax != f[1] {
		c.t.Errorf("%s: MemoryMax=%s TasksMax=%s, but the kernel enforces memory %s and tasks %s",
			unit, f[0], f[1], l.memoryMax, l.tasksMax)
	}
}

// TestSystemdResourceLimits: each unit's MemoryMax= and TasksMax= are in
// force; willi serve holds 200 sessions (its default -max-conn) within
// them, and one per-connection session fits its instance's.
func TestSystemdResourceLimits(t *testing.T) {
	c := installedContainer(t)
	c.sh("systemctl enable --now willi-serve.socket")
	c.normalSession("willi-serve.socket")
	c.wantLimits("willi-serve.service", c.limits("willi-serve.service"))

	// 200 sessions held at once; the cgroup's task count sampled meanwhile,
	// its memory peak read after.
	out := c.sh(`cg=$(systemctl show -p ControlGroup --value willi-serve.service)
p=/sys/fs/cgroup/pids$cg/pids.current m=/sys/fs/cgroup/memory$cg
[ -f "$p" ] || p=/sys/fs/cgroup$cg/pids.current
echo 0 >"$m/memory.max_usage_in_bytes" 2>/dev/null || true
smtpload -addr 127.0.0.1:25 -burst 200 -hold -sources 200 -timeout 60s >/tmp/load.out 2>&1 &
load=$!
peak=0
while kill -0 $load 2>/dev/null; do
	n=$(cat "$p"); [ "$n" -gt "$peak" ] && peak=$n
	sleep 0.01
done
wait $load || true
cat /tmp/load.out
echo "peak_tasks=$peak"
echo "peak_memory=$(cat "$m/memory.max_usage_in_bytes" 2>/dev/null || cat /sys/fs/cgroup$cg/memory.peak)"`)
	l := load{"output": out}
	for _, m := range loadField.FindAllStringSubmatch(out, -1) {
		l[m[1]] = m[2]
	}
	if l.n("ok") != 200 {
		t.Errorf("200 sessions at once under willi-serve.service's limits: %s", out)
	}
	lim := c.limits("willi-serve.service")
	tasksMax, _ := strconv.Atoi(lim.tasksMax)
	memoryMax, _ := strconv.Atoi(lim.memoryMax)
	peakTasks, peakMemory := l.n("peak_tasks"), l.n("peak_memory")
	t.Logf("willi-serve.service, 200 sessions held: peak %d tasks of %d (%.1f a session), peak memory %.1f MiB of %d MiB (%.0f KiB a session)",
		peakTasks, tasksMax, float64(peakTasks)/200, float64(peakMemory)/(1<<20), memoryMax>>20, float64(peakMemory)/200/1024)
	if peakTasks < 200 || peakTasks >= tasksMax || peakMemory <= 0 || peakMemory >= memoryMax {
		t.Errorf("200 sessions: peak %d tasks, %d bytes; want at least one task a session, within TasksMax=%d and MemoryMax=%d",
			peakTasks, peakMemory, tasksMax, memoryMax)
	}

	// One session held under the per-connection pair: its instance's limits.
	c.sh("systemctl disable --now willi-serve.socket willi-serve.service && systemctl enable --now willi.socket")
	out = c.whileHeld(`unit=$(systemctl list-units --no-legend --plain 'willi@*.service' | awk '{ print $1; exit }')
echo "unit=$unit"
set -- "$unit"
` + cgroupScript)
	lines := strings.Split(strings.TrimSpace(out), "\n") // banner, unit, limits, bye
	if len(lines) != 4 {
		t.Fatalf("held session under willi.socket: %q", out)
	}
	unit := strings.TrimPrefix(lines[1], "unit=")
	f := strings.Fields(lines[2])
	if !strings.HasPrefix(unit, "willi@") || len(f) != 4 {
		t.Fatalf("held session under willi.socket: %q", out)
	}
	c.wantLimits(unit, unitLimits{f[0], f[1], f[2], f[3]})
	t.Logf("%s, one session: %s tasks of %s, memory %s of %s bytes", unit, f[3], f[1], f[2], f[0])
}

// TestSystemdServeAtTasksMax: with TasksMax= too small for its -max-conn,
// willi serve takes no more sessions than the limit holds (a session that
// cannot start its threads would die, and all of them together): it says so
// at start, answers the others 421 4.3.2 like any connection over
// -max-conn, and serves on afterwards.
func TestSystemdServeAtTasksMax(t *testing.T) {
	c := installedContainer(t)
	c.sh(`mkdir -p /etc/systemd/system/willi-serve.service.d
printf '[Service]\nTasksMax=60\n' >/etc/systemd/system/willi-serve.service.d/tasks.conf
systemctl daemon-reload
systemctl enable --now willi-serve.socket`)
	c.normalSession("willi-serve.socket")
	c.wantLimits("willi-serve.service", c.limits("willi-serve.service"))

	l := c.smtpload("-addr", "127.0.0.1:25", "-burst", "100", "-hold", "-sources", "100", "-timeout", "60s")
	t.Logf("100 at once under TasksMax=60: %s", strings.TrimSpace(l["output"]))
	if l.n("ok") == 0 || l.n("ok")+l.n("refused") != 100 || l["refused_codes"] != fmt.Sprintf("4.3.2:%d", l.n("refused")) {
		t.Errorf("100 at once under TasksMax=60: want some served and the rest refused with 421 4.3.2: %s", l["output"])
	}
	if got := c.active("willi-serve.service"); got != "active" {
		t.Errorf("willi-serve.service is %s after its TasksMax", got)
	}
	c.normalSession("after TasksMax was reached")
	log := c.sh("journalctl -u willi-serve.service --no-pager -o cat")
	if !strings.Contains(log, "the task limit (TasksMax=) holds fewer sessions than -max-conn") {
		t.Errorf("no warning about the task limit at start:\n%s", log)
	}
	if strings.Contains(log, "goroutine ") || strings.Contains(log, "Scheduled restart") {
		t.Errorf("a willi process crashed:\n%s", log)
	}
}

// TestSystemdCSVIndexWithinMemoryMax: with a million-row CSV mapping, the
// first session under each unit pair finds no index in the unit's
// CacheDirectory, is routed by the scan, and its process rebuilds the
// index within its unit's MemoryMax= (256M for willi@.service, enforced):
// no OOM kill, and the next lookup answers from the index.
func TestSystemdCSVIndexWithinMemoryMax(t *testing.T) {
	if testing.Short() {
		t.Skip("a 1M-row CSV in the container")
	}
	c := installedContainer(t)
	c.sh(fmt.Sprintf(`awk 'BEGIN { print "pattern,server"; for (i = 0; i < 1000000; i++) printf "user%%07d@example.org,127.0.0.1:%d\n", i }' >/opt/willi/etc/routes.csv
echo 'rcpt@example.com,127.0.0.1:%d' >>/opt/willi/etc/routes.csv
cat >/opt/willi/etc/willi.conf <<EOF
hostname = "mx.test.example"
[[mapping]]
type = "csv"
file = "/opt/willi/etc/routes.csv"
EOF`, ctSinkPort, ctSinkPort))
	for _, socket := range []string{"willi.socket", "willi-serve.socket"} {
		c.sh("systemctl disable --now willi.socket willi-serve.socket willi-serve.service 2>/dev/null; rm -rf /var/cache/willi/*; systemctl enable --now " + socket)
		// smtpload sends to rcpt@example.com: the CSV's last row.
		c.normalSession(socket + ", index missing")
		// The session's process renames the index into place before it
		// exits; only then may a lookup look (it would rebuild one itself).
		out := c.sh(`for i in $(seq 300); do
	ls /var/cache/willi/routes.csv.*.idx >/dev/null 2>&1 && break
	sleep 0.1
done
runuser -u willi -- env CACHE_DIRECTORY=/var/cache/willi /opt/willi/bin/willi lookup -config /opt/willi/etc/willi.conf rcpt@example.com
journalctl --no-pager -o cat | grep -iE 'oom|memory' | grep -i willi || true`)
		if !strings.Contains(out, "from index") || strings.Contains(strings.ToLower(out), "oom") {
			t.Errorf("%s: after the first session, no index or an OOM kill:\n%s", socket, out)
		}
		c.normalSession(socket + ", from the index")
	}
}
