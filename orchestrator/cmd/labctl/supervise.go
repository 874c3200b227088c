package main

import (
	"context"
	"flag"

	"ldtlab/orchestrator/lab"
)

// The supervise verb is the hidden verb `labctl up` starts: the process that owns one VM.
func init() {
	var sup guestFlags
	var supShares shareFlags
	var supDir string
	var supGDB bool
	register(&command{
		name:    "supervise",
		args:    "NAME",
		summary: "(internal) the background process that owns one VM",
		hidden:  true,
		setup: func(fs *flag.FlagSet) {
			sup.register(fs)
			supShares.register(fs)
			fs.StringVar(&supDir, "dir", "", "VM directory")
			fs.BoolVar(&supGDB, "gdb", false, "gdbstub on the unix socket gdb.sock in the VM directory")
		},
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			repo, err := repoRoot()
			if err != nil {
				return err
			}
			o := sup.devOptions(repo, args[0])
			o.Dir, o.GDB, o.NoBuild = supDir, supGDB, true
			o.Shares = supShares.shares
			return lab.Supervise(context.Background(), o)
		},
	})
}
