package kernel

import (
	"context"
	"fmt"
	"io"
	"ldtlab/internal/fileutil"
	"os"
	"path/filepath"
	"strings"
)

// keepGDBScripts puts the kernel's gdb helpers into the cache entry dst:
// vmlinux-gdb.py next to vmlinux and scripts/gdb/linux/*.py below it,
// where vmlinux-gdb.py looks for them (its own directory +
// "/scripts/gdb"). In the object directory they are symlinks into the
// work tree, which the next build replaces: the entry gets copies.
func (p *plan) keepGDBScripts(ctx context.Context, srcDir, outDir, dst string, log io.Writer) error {
	// scripts_gdb also generates linux/constants.py from this .config.
	if err := p.make(ctx, srcDir, log, false, "O="+outDir, "scripts_gdb"); err != nil {
		return err
	}
	if err := fileutil.CopyFile(filepath.Join(outDir, "vmlinux-gdb.py"), filepath.Join(dst, "vmlinux-gdb.py"), 0o644); err != nil {
		return fmt.Errorf("copying vmlinux-gdb.py (is CONFIG_GDB_SCRIPTS set?): %w", err)
	}
	from := filepath.Join(outDir, "scripts", "gdb", "linux")
	to := filepath.Join(dst, "scripts", "gdb", "linux")
	if err := os.MkdirAll(to, 0o755); err != nil {
		return err
	}
	ents, err := os.ReadDir(from)
	if err != nil {
		return err
	}
	n := 0
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".py") {
			continue
		}
		if err := fileutil.CopyFile(filepath.Join(from, e.Name()), filepath.Join(to, e.Name()), 0o644); err != nil {
			return fmt.Errorf("copying scripts/gdb/linux/%s: %w", e.Name(), err)
		}
		n++
	}
	if _, err := os.Stat(filepath.Join(to, "constants.py")); err != nil {
		return fmt.Errorf("scripts_gdb did not generate constants.py: %w", err)
	}
	p.logf("kept vmlinux-gdb.py and %d gdb helper modules", n)
	return nil
}
