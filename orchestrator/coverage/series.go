// Package coverage maps the gcov counters of a coverage kernel (images
// config "coverage") onto the lines the LDT series adds or changes.
package coverage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// Origin is one file of the final tree with, for every line, the patch
// that last added or changed it ("" for a line of the pristine source).
type Origin struct {
	Lines []string
	Patch []string
}

// SeriesLines applies patches (file names under patchDir, in order) to
// the pristine copies of the files they touch (under pristineDir; a file
// absent there is one the series adds) and returns the final content of
// every file with each line's origin. Each patch is applied with GNU
// patch, as the kernel build does, and the file before and after it is
// compared with GNU diff: a hunk's line numbers are never trusted, so
// offsets left by earlier patches and fuzz cannot shift a line onto the
// wrong patch.
func SeriesLines(ctx context.Context, pristineDir, patchDir string, patches []string) (map[string]*Origin, error) {
	tree, err := os.MkdirTemp("", "ldtlab-series-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tree)
	if patchDir, err = filepath.Abs(patchDir); err != nil {
		return nil, err
	}
	files := map[string]*Origin{}
	for _, name := range patches {
		pt := filepath.Join(patchDir, name)
		touched, err := PatchFiles(pt)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", name, err)
		}
		before := map[string][]byte{}
		for _, f := range touched {
			if _, ok := files[f]; !ok {
				b, err := os.ReadFile(filepath.Join(pristineDir, f))
				if err != nil && !errors.Is(err, os.ErrNotExist) {
					return nil, err
				}
				if err == nil {
					if err := writeFile(filepath.Join(tree, f), b); err != nil {
						return nil, err
					}
				}
				files[f] = &Origin{Lines: splitLines(b), Patch: make([]string, len(splitLines(b)))}
			}
			b, _ := os.ReadFile(filepath.Join(tree, f))
			before[f] = b
		}
		cmd := exec.CommandContext(ctx, "patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch", "-i", pt)
		cmd.Dir = tree
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("applying %s to the pristine copies: %v: %s", name, err, out)
		}
		for _, f := range touched {
			after, err := os.ReadFile(filepath.Join(tree, f))
			if errors.Is(err, os.ErrNotExist) {
				delete(files, f) // the patch removes the file
				continue
			}
			if err != nil {
				return nil, err
			}
			o, err := retag(ctx, files[f], before[f], after, name)
			if err != nil {
				return nil, fmt.Errorf("comparing %s before and after %s: %w", f, name, err)
			}
			files[f] = o
		}
	}
	return files, nil
}

// retag carries each line's origin from before to after: a line diff
// reports unchanged lines (which keep theirs) and new ones (which get
// patch).
func retag(ctx context.Context, o *Origin, before, after []byte, patch string) (*Origin, error) {
	ops, err := lineDiff(ctx, before, after)
	if err != nil {
		return nil, err
	}
	n := &Origin{Lines: splitLines(after)}
	i := 0 // index into o (before)
	for _, op := range ops {
		switch op {
		case '-':
			i++
		case '=':
			if i >= len(o.Patch) {
				return nil, errors.New("diff reports more unchanged lines than the file had")
			}
			n.Patch = append(n.Patch, o.Patch[i])
			i++
		case '+':
			n.Patch = append(n.Patch, patch)
		}
	}
	if len(n.Patch) != len(n.Lines) || i != len(o.Patch) {
		return nil, fmt.Errorf("diff accounts for %d of %d lines after and %d of %d before", len(n.Patch), len(n.Lines), i, len(o.Patch))
	}
	return n, nil
}

// lineDiff is GNU diff's minimal line diff of a and b as one operation
// per line: '-' (only in a), '+' (only in b), '=' (in both).
func lineDiff(ctx context.Context, a, b []byte) ([]byte, error) {
	dir, err := os.MkdirTemp("", "ldtlab-diff-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	pa, pb := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	if err := os.WriteFile(pa, a, 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(pb, b, 0o600); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "diff", "--minimal", "--old-line-format=-\n", "--new-line-format=+\n", "--unchanged-line-format==\n", pa, pb)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 1) {
		return nil, fmt.Errorf("diff: %v: %s", err, stderr.String())
	}
	var ops []byte
	for _, l := range bytes.Split(out, []byte("\n")) {
		if len(l) == 1 {
			ops = append(ops, l[0])
		}
	}
	return ops, nil
}

// PatchFiles lists the files a unified diff touches (-p1), in order.
func PatchFiles(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var files []string
	seen := map[string]bool{}
	var minus string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "--- ") {
			minus = strings.TrimPrefix(line, "--- ")
			continue
		}
		if !strings.HasPrefix(line, "+++ ") {
			continue
		}
		target := strings.TrimPrefix(line, "+++ ")
		if f := strings.Fields(target); len(f) > 0 && f[0] == "/dev/null" {
			target = minus // a deletion: the file is the old side's
		}
		f := strings.Fields(target)
		if len(f) == 0 {
			continue
		}
		name := f[0]
		if i := strings.IndexByte(name, '/'); i >= 0 {
			name = name[i+1:]
		}
		if !seen[name] {
			seen[name] = true
			files = append(files, name)
		}
	}
	return files, nil
}

func splitLines(b []byte) []string {
	if len(b) == 0 {
		return nil
	}
	s := strings.TrimSuffix(string(b), "\n")
	return strings.Split(s, "\n")
}

func writeFile(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// Sorted returns the keys of files in order.
func Sorted[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
