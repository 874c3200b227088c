package lab

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"ldtlab/internal/procutil"
)

// Proc is a process that belongs to one background VM.
type Proc struct {
	PID  int
	Role string // "supervisor" or "qemu"
}

// Processes finds what really runs for the VM name whose directory is
// dir, whatever state.json says: its supervisors (labctl supervise -dir
// DIR NAME) and QEMUs (whose QMP socket is DIR/qmp.sock). Matching is on
// whole arguments, so the VM "x" never matches "xy".
func Processes(name, dir string) []Proc {
	var out []Proc
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		argv := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
		if role := MatchVM(argv, name, dir); role != "" && alive(pid) {
			out = append(out, Proc{PID: pid, Role: role})
		}
	}
	return out
}

// MatchVM says whether argv is the supervisor or the QEMU of the VM name
// in dir ("" if neither).
func MatchVM(argv []string, name, dir string) string {
	if len(argv) == 0 {
		return ""
	}
	base := filepath.Base(argv[0])
	switch {
	case strings.Contains(base, "labctl"):
		if len(argv) < 2 || argv[1] != "supervise" || argv[len(argv)-1] != name {
			return ""
		}
		for i := 2; i+1 < len(argv); i++ {
			if (argv[i] == "-dir" || argv[i] == "--dir") && filepath.Clean(argv[i+1]) == filepath.Clean(dir) {
				return "supervisor"
			}
		}
	case strings.HasPrefix(base, "qemu-system"):
		want := "unix:" + strings.ReplaceAll(filepath.Join(dir, "qmp.sock"), ",", ",,") + ","
		for i := 1; i+1 < len(argv); i++ {
			if argv[i] == "-qmp" && strings.HasPrefix(argv[i+1], want) {
				return "qemu"
			}
		}
	}
	return ""
}

// Stop ends procs: SIGTERM to the supervisors (each powers its guest off
// and stops its QEMU), or to the QEMUs when no supervisor is left; then,
// after grace, SIGKILL to everything still alive.
func Stop(procs []Proc, grace time.Duration) {
	var term, all []int
	hasSupervisor := slices.ContainsFunc(procs, func(p Proc) bool { return p.Role == "supervisor" })
	for _, p := range procs {
		all = append(all, p.PID)
		if p.Role == "supervisor" || !hasSupervisor {
			term = append(term, p.PID)
		}
	}
	procutil.Stop(term, all, grace)
}

func alive(pid int) bool { return procutil.Alive(pid) }
