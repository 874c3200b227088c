package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"golang.org/x/term"

	"ldtlab/orchestrator/lab"
)

// The dump verb saves a guest's memory as an ELF vmcore (post-mortem).
func init() {
	var physical bool
	register(&command{
		name:    "dump",
		args:    "NAME [FILE]",
		summary: "write a guest's memory to FILE as an ELF vmcore for gdb or crash (default NAME-TIME.vmcore; qemu backend)",
		setup: func(fs *flag.FlagSet) {
			fs.BoolVar(&physical, "physical", false, "physical memory only: no virtual addresses (crash reads it, gdb cannot read kernel variables from it)")
		},
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			if len(args) < 1 || len(args) > 2 {
				return usagef(fs, "need a VM name and at most one file")
			}
			return cmdDump(ctx, args[0], args[1:], physical)
		},
	})
}

func cmdDump(ctx context.Context, name string, file []string, physical bool) error {
	dir, err := lab.VMDir(name)
	if err != nil {
		return err
	}
	st, err := lab.ReadState(dir)
	if os.IsNotExist(err) {
		return &lab.NoVMError{Name: name}
	}
	if err != nil {
		return err
	}
	if !st.Alive() {
		return fmt.Errorf("VM %q is not running (status %s): there is no memory to dump", name, st.Status)
	}
	path := name + "-" + time.Now().UTC().Format("20060102-150405") + ".vmcore"
	if len(file) == 1 {
		path = file[0]
	}
	tty := term.IsTerminal(int(os.Stderr.Fd()))
	progress := func(done, total int64) {
		pct := 0.0
		if total > 0 {
			pct = float64(done) * 100 / float64(total)
		}
		line := fmt.Sprintf("[dump] %s: %d/%d MiB (%.0f%%)", name, done>>20, total>>20, pct)
		if tty {
			fmt.Fprintf(os.Stderr, "\r%s", line)
		} else {
			fmt.Fprintln(os.Stderr, line)
		}
	}
	t := time.Now()
	n, err := lab.Dump(ctx, dir, path, lab.DumpOptions{Physical: physical, Progress: progress})
	if tty {
		fmt.Fprintln(os.Stderr)
	}
	if err != nil {
		return fmt.Errorf("dumping %s: %w", name, err)
	}
	fmt.Printf("wrote %s: %d MiB, ELF vmcore of %s's memory, in %.1fs (%s)\n", path, n>>20, name, time.Since(t).Seconds(), st.Accel)
	if st.Vmlinux != "" {
		fmt.Printf("  %s\n", lab.GDBCommand(st.Vmlinux, st.GDBScripts, "", path))
	}
	return nil
}
