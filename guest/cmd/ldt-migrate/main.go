// Command ldt-migrate is the in-guest migrator of issue 21: an iterative
// (pre-copy) migration of a process whose every copied page is chosen by
// the tracker under test, dumped and restored with CRIU (guest/migrate).
// It prints exactly one JSON object on stdout; progress goes to stderr.
//
//	ldt-migrate -tracker NAME -pid PID -dir DIR [-rounds N] [-interval D] [-quiesce CMD] [-timeout D]
//	ldt-migrate -restore -dir DIR [-pid PID] [-timeout D]
//	ldt-migrate -burn-pids N
//
// The source side copies the target's memory round by round, freezes it,
// dumps it with CRIU into DIR and replaces CRIU's page contents with its
// own copy. -restore restores DIR with CRIU (on this guest or another
// one) and lets the restored process run (it was frozen at the dump).
//
// -burn-pids spawns short-lived processes until the kernel has handed out
// pid N: a migration to another guest restores the process under its
// pid, which must be free there, and the guest kernel has no pid
// namespaces (CONFIG_PID_NS off) to give it one of its own.
//
// Exit status: 0 when the step worked (the host judges the migration),
// 1 when it failed, 2 on bad usage.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"ldtlab/guest/migrate"
	"ldtlab/guest/result"
	"ldtlab/guest/tracker"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ldt-migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	trk := fs.String("tracker", "", "tracker: "+strings.Join(tracker.Names(), ", "))
	pid := fs.Int("pid", 0, "the process to migrate (with -restore: its pid, checked free first)")
	dir := fs.String("dir", "", "CRIU image directory")
	rounds := fs.Int("rounds", 5, "pre-copy rounds after the initial copy (the frozen final round comes on top)")
	interval := fs.Duration("interval", time.Second, "time the target runs between rounds")
	quiesce := fs.String("quiesce", "", "shell command run before the freeze (stops the load, prints the application's digest); $PID is the target")
	timeout := fs.Duration("timeout", 10*time.Minute, "bound on the whole step")
	criuBin := fs.String("criu", "criu", "the criu binary")
	restore := fs.Bool("restore", false, "restore -dir with CRIU and let the process run")
	quiet := fs.Bool("q", false, "no progress on stderr")
	burn := fs.Int("burn-pids", 0, "spawn processes until the last pid handed out is at least this")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "ldt-migrate: "+format+"\n", a...)
		return 2
	}
	if fs.NArg() > 0 {
		return usage("unexpected arguments %q", fs.Args())
	}
	if *burn > 0 {
		last, err := burnPids(*burn, *timeout)
		if err != nil {
			fmt.Fprintln(stderr, "ldt-migrate:", err)
			return 1
		}
		fmt.Fprintln(stdout, last)
		return 0
	}
	if *dir == "" {
		return usage("-dir is required")
	}
	var progress io.Writer = stderr
	if *quiet {
		progress = nil
	}
	if *restore {
		res := doRestore(*criuBin, *dir, *pid, *timeout)
		if printJSON(stdout, res) != 0 || res.Outcome != "pass" {
			return 1
		}
		return 0
	}
	if !tracker.Known(*trk) {
		return usage("-tracker: unknown tracker %q (have %s)", *trk, strings.Join(tracker.Names(), ", "))
	}
	if *pid <= 0 {
		return usage("-pid is required")
	}
	res := migrate.Run(migrate.Options{
		Tracker: *trk, Pid: *pid, Rounds: *rounds, Interval: *interval, Dir: *dir,
		Criu: *criuBin, Quiesce: *quiesce, Timeout: *timeout, Progress: progress,
	})
	if printJSON(stdout, res) != 0 || res.Outcome == "fail" {
		return 1
	}
	return 0
}

// doRestore restores dir and continues the restored task (CRIU restores a
// task stopped at dump time stopped), then checks that it still lives.
func doRestore(criuBin, dir string, pid int, timeout time.Duration) *result.MigrationRestore {
	res := &result.MigrationRestore{Mode: "migrate-restore"}
	if st := migrate.State(pid); pid > 0 && st != "" {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		res.Outcome, res.Reason = "fail", fmt.Sprintf("pid %d of the migrated process is taken here (by %s, state %s): CRIU restores a process under its own pid", pid, strings.TrimSpace(string(comm)), st)
		return res
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	t0 := time.Now()
	rpid, tail, err := migrate.Restore(ctx, criuBin, dir)
	pid = rpid
	res.MS = float64(time.Since(t0).Microseconds()) / 1000
	res.Pid, res.Log = pid, tail
	if err != nil {
		res.Outcome, res.Reason = "fail", err.Error()
		return res
	}
	if err := unix.Kill(pid, unix.SIGCONT); err != nil {
		res.Outcome, res.Reason = "fail", fmt.Sprintf("restored pid %d: SIGCONT: %v", pid, err)
		return res
	}
	// A process restored from a corrupt image often dies at once.
	time.Sleep(300 * time.Millisecond)
	if st := migrate.State(pid); st == "" || st == "Z" || st == "X" {
		res.Outcome, res.Reason = "fail", fmt.Sprintf("restored pid %d died right after the restore (state %q)", pid, st)
		return res
	}
	res.Outcome = "pass"
	return res
}

func printJSON(w io.Writer, v any) int {
	b, err := json.Marshal(v)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ldt-migrate:", err)
		return 1
	}
	fmt.Fprintln(w, string(b))
	return 0
}

// lastPid is the last pid the kernel handed out (/proc/loadavg).
func lastPid() (int, error) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) < 5 {
		return 0, fmt.Errorf("/proc/loadavg: %q", b)
	}
	return strconv.Atoi(f[4])
}

// burnPids spawns /bin/true until the last pid is at least n.
func burnPids(n int, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		last, err := lastPid()
		if err != nil || last >= n {
			return last, err
		}
		if time.Now().After(deadline) {
			return last, fmt.Errorf("the last pid is still %d after %s (want %d)", last, timeout, n)
		}
		if err := exec.Command("/bin/true").Run(); err != nil {
			return last, err
		}
	}
}
