// Command ldt-selftest checks the /dev/ldt interface of issue 3 inside the
// guest: it prints "ok NAME" or "FAIL NAME: details" per check and exits 1
// if any check failed (2 on bad usage). Lines starting with "#" are
// informational (-v).
//
// It re-executes itself with the hidden -selftest-child flag for the
// processes some checks need: a target to attach to, a writer that exits
// while attached, and an unprivileged attacher for EPERM.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"regexp"
	"runtime/debug"
	"strings"
)

const pg = 4096

var verbose bool

// sink keeps reads that exist only to fault pages in from being optimised away.
var sink byte

func info(format string, args ...any) {
	if verbose {
		fmt.Printf("# "+format+"\n", args...)
	}
}

type check struct {
	name string
	fn   func() error
}

var checks = []check{
	{"basic", checkBasic},
	{"merge", checkMerge},
	{"walk-end", checkWalkEnd},
	{"collect-counts", checkCollectCounts},
	{"einval-unaligned", checkEinvalUnaligned},
	{"einval-inverted", checkEinvalInverted},
	{"einval-flags", checkEinvalFlags},
	{"einval-size", checkEinvalSize},
	{"einval-vec-len-0", checkEinvalVecLen0},
	{"efault-vec", checkEfaultVec},
	{"enxio-not-attached", checkEnxio},
	{"ebusy-attach-twice", checkEbusy},
	{"esrch-no-such-pid", checkEsrchNoPid},
	{"esrch-target-exited", checkEsrchExited},
	{"esrch-no-mm", checkAttachNoMM},
	{"eperm-unprivileged", checkEperm},
	{"exit-while-attached", checkExitWhileAttached},
	{"thp-pmd", checkTHP},
	{"gup-process-vm-writev", checkProcessVMWritev},
	{"gup-proc-pid-mem", checkProcMem},
	{"naive-cpu-write", checkNaiveCPUWrite},
	{"naive-misses-gup-write", checkNaiveMissesGUP},
}

func main() {
	child := flag.String("selftest-child", "", "internal: run as a helper process")
	run := flag.String("run", "", "run only checks matching this regexp")
	list := flag.Bool("list", false, "list the checks and exit")
	flag.BoolVar(&verbose, "v", false, "print informational # lines")
	flag.Parse()
	if *child != "" {
		os.Exit(childMain(*child, flag.Args()))
	}
	if *list {
		for _, c := range checks {
			fmt.Println(c.name)
		}
		return
	}
	re, err := regexp.Compile(*run)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ldt-selftest: -run:", err)
		os.Exit(2)
	}
	failed := 0
	for _, c := range checks {
		if !re.MatchString(c.name) {
			continue
		}
		var skip skipError
		if err := runCheck(c.fn); errors.As(err, &skip) {
			fmt.Printf("skip %s: %s\n", c.name, skip.reason)
		} else if err != nil {
			failed++
			fmt.Printf("FAIL %s: %s\n", c.name, strings.ReplaceAll(err.Error(), "\n", "; "))
		} else {
			fmt.Printf("ok %s\n", c.name)
		}
	}
	if failed > 0 {
		os.Exit(1)
	}
}

// runCheck turns a panic into a failure so one broken check cannot hide
// the results of the others.
func runCheck(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v: %s", r, debug.Stack())
		}
	}()
	return fn()
}

// skipError is a check that could not run here (a missing kernel feature
// or machine property): printed as "skip NAME: reason", neither ok nor FAIL.
type skipError struct{ reason string }

func (e skipError) Error() string { return "skip: " + e.reason }

func skipf(format string, args ...any) error { return skipError{fmt.Sprintf(format, args...)} }
