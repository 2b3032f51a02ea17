package main

import (
	"os"
	"path"
	"strconv"
	"strings"
)

// Under a task limit (systemd's TasksMax=, the pids controller) every
// thread of every session counts. A willi child runs about 5 threads (the
// Go runtime's, with GOMAXPROCS=1), and one that cannot start a thread dies
// at once: more sessions than the limit holds would not be refused, they
// would all fail together. willi serve therefore takes no more sessions
// than the limit holds, and answers the others 421 4.3.2 as at -max-conn.
const (
	serveTasksPerSession = 8  // measured: 5-6 in a held session; room for a busier one
	serveOwnTasks        = 16 // willi serve's own threads
)

// sessionsWithinTasks returns how many sessions the task limit of willi
// serve's cgroup (and its parents') holds, or 0 when there is no limit.
func sessionsWithinTasks() int {
	limit := tasksLimit("/proc/self/cgroup", "/sys/fs/cgroup")
	if limit <= 0 {
		return 0
	}
	return max(1, (limit-serveOwnTasks)/serveTasksPerSession)
}

// tasksLimit reads the smallest pids.max on the way from the process's
// cgroup (as procCgroup lists it) up to the root, under the pids
// hierarchy of cgroup v1 or the unified one of v2; 0 when none is set.
func tasksLimit(procCgroup, root string) int {
	data, err := os.ReadFile(procCgroup)
	if err != nil {
		return 0
	}
	least := 0
	for _, line := range strings.Split(string(data), "\n") {
		// hierarchy-ID:controllers:path; v2 is "0::path".
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		var dir string
		switch {
		case f[1] == "pids":
			dir = path.Join(root, "pids")
		case f[0] == "0" && f[1] == "":
			dir = root
			if _, err := os.Stat(path.Join(root, "unified")); err == nil {
				dir = path.Join(root, "unified")
			}
		default:
			continue
		}
		for p := path.Clean("/" + f[2]); ; p = path.Dir(p) {
			b, err := os.ReadFile(path.Join(dir, p, "pids.max"))
			if n, perr := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && perr == nil && (least == 0 || n < least) {
				least = n
			}
			if p == "/" {
				break
			}
		}
	}
	return least
}
