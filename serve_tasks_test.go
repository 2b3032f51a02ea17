package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestTasksLimit reads the smallest pids.max from the process's cgroup up,
// under cgroup v1's pids hierarchy or v2's unified one; none set is 0.
func TestTasksLimit(t *testing.T) {
	for _, tc := range []struct {
		name, cgroup string
		files        map[string]string // path below the root: pids.max content
		want         int
	}{
		{"v1, the unit's own", "8:pids:/system.slice/willi-serve.service\n4:memory:/x\n0::/system.slice/willi-serve.service\n",
			map[string]string{"pids/system.slice/willi-serve.service": "4096\n", "pids/system.slice": "max\n"}, 4096},
		{"v1, a parent's smaller", "8:pids:/system.slice/willi-serve.service\n",
			map[string]string{"pids/system.slice/willi-serve.service": "4096\n", "pids/system.slice": "100\n"}, 100},
		{"v1, none set", "8:pids:/system.slice/willi-serve.service\n",
			map[string]string{"pids/system.slice/willi-serve.service": "max\n"}, 0},
		{"v2", "0::/system.slice/willi-serve.service\n",
			map[string]string{"system.slice/willi-serve.service": "60\n"}, 60},
		{"hybrid: v2 in unified", "1:name=systemd:/a\n0::/a\n",
			map[string]string{"unified/a": "70\n"}, 70},
		{"the root, no pids.max", "8:pids:/\n0::/\n", nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			root := filepath.Join(dir, "cgroup")
			os.MkdirAll(root, 0o755)
			for p, v := range tc.files {
				os.MkdirAll(filepath.Join(root, p), 0o755)
				if err := os.WriteFile(filepath.Join(root, p, "pids.max"), []byte(v), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if tc.name == "hybrid: v2 in unified" {
				os.MkdirAll(filepath.Join(root, "unified"), 0o755)
			}
			proc := filepath.Join(dir, "cgroup.txt")
			os.WriteFile(proc, []byte(tc.cgroup), 0o644)
			if got := tasksLimit(proc, root); got != tc.want {
				t.Errorf("tasksLimit = %d, want %d", got, tc.want)
			}
		})
	}
}
