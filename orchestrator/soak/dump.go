package soak

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"ldtlab/internal/secfs"
	"ldtlab/orchestrator/vm"
)

// A step that hangs or times out leaves, before its guest is killed or
// reused, the guest's console and a sysrq-t/w dump (every task's stack,
// then the blocked ones) in DIR/dumps/<round>-w<worker>-<n>/: what a
// kernel engineer asks for first about a hang.

// maxDumps bounds the dump directories a soak keeps (each up to a few MiB).
var maxDumps = 50

// stuck: the step hung (the guest stopped answering) or ran out of its
// time limit (the guest answers, the step's process was killed).
func stuck(err error) bool {
	var he *vm.HangError
	return errors.As(err, &he) || errors.Is(err, context.DeadlineExceeded)
}

// keepDump takes the sysrq-t/w dump and writes it with the console;
// returns the dump (nil if none could be taken) and records its
// directory in c.
func (s *Soak) keepDump(ctx context.Context, n, w int, st Step, g *guest, c *CellRecord) []byte {
	if g == nil {
		return nil
	}
	var text string
	var derr error
	if s.dump != nil {
		text, derr = s.dump(ctx, g)
	}
	if derr != nil {
		text += fmt.Sprintf("\n[soak: the sysrq dump failed: %v]\n", derr)
	}
	root := filepath.Join(s.Dir, "dumps")
	if err := secfs.Mkdir(root, 0o755); err != nil {
		s.logf("dump: %v", err)
		return []byte(text)
	}
	if ents, _ := os.ReadDir(root); len(ents) >= maxDumps {
		s.logf("dump: %d dump directories already kept; this one is only in the crash store (if a hang)", len(ents))
		return []byte(text)
	}
	name := fmt.Sprintf("r%d-w%d-%s", n, w, time.Now().UTC().Format("150405.000"))
	d := filepath.Join(root, name)
	if err := secfs.Mkdir(d, 0o755); err != nil {
		s.logf("dump: %v", err)
		return []byte(text)
	}
	log := g.log()
	if len(log) > maxLog {
		log = append([]byte(fmt.Sprintf("[soak: %d earlier bytes of the console dropped]\n", len(log)-maxLog)), log[len(log)-maxLog:]...)
	}
	meta, _ := json.MarshalIndent(map[string]any{"round": n, "worker": w, "step": st, "at": time.Now().UTC()}, "", "  ")
	for f, b := range map[string][]byte{"sysrq.txt": []byte(text), "console.log": log, "step.json": meta} {
		if err := writeAtomic(filepath.Join(d, f), b); err != nil {
			s.logf("dump: %v", err)
		}
	}
	c.Dump = filepath.Join("dumps", name)
	s.progress.event("round %d worker %d: %s hung or ran out of time: console and sysrq-t/w dump in %s", n, w, st.Name(), d)
	return []byte(text)
}

// sysrqDump is the real dump: SysRq t then w on the serial console,
// each until the console has been quiet for 5 s (TCG prints slowly),
// at most 3 minutes in all.
func sysrqDump(ctx context.Context, g *guest) (string, error) {
	if g.m == nil {
		return "", errors.New("no machine")
	}
	return g.m.SysrqDump(ctx, "tw", 5*time.Second, 3*time.Minute)
}
