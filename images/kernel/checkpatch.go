package kernel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// CheckpatchAllowed are the checkpatch.pl message types the series may
// carry: the lab's patches have no Signed-off-by (they are not sent
// upstream under anyone's name).
var CheckpatchAllowed = map[string]bool{"MISSING_SIGN_OFF": true}

// CheckpatchResult is what scripts/checkpatch.pl said about one patch.
type CheckpatchResult struct {
	Patch    string   `json:"patch"`
	Problems []string `json:"problems,omitempty"` // ERROR/WARNING messages not allowed, "TYPE: message"
	Allowed  []string `json:"allowed,omitempty"`  // those CheckpatchAllowed lets through
	Output   string   `json:"output"`
}

// OK reports whether the patch has nothing but allowed messages.
func (r CheckpatchResult) OK() bool { return len(r.Problems) == 0 }

var checkpatchLine = regexp.MustCompile(`^(ERROR|WARNING|CHECK):([A-Z0-9_]+): (.*)$`)

// parseCheckpatch sorts checkpatch.pl --show-types output into problems
// and allowed messages. With the output goes the context lines that
// follow each message (the "#12: FILE: ..." and source lines).
func parseCheckpatch(patch, out string) CheckpatchResult {
	r := CheckpatchResult{Patch: patch, Output: out}
	for _, l := range strings.Split(out, "\n") {
		m := checkpatchLine.FindStringSubmatch(strings.TrimSpace(l))
		if m == nil {
			continue
		}
		msg := m[1] + " " + m[2] + ": " + m[3]
		if CheckpatchAllowed[m[2]] {
			r.Allowed = append(r.Allowed, msg)
		} else {
			r.Problems = append(r.Problems, msg)
		}
	}
	return r
}

// Checkpatch runs scripts/checkpatch.pl of the kernel source the lab
// builds (the pristine extraction) on every patch of the series, in
// order. An error is a failure to run it, not a finding.
func Checkpatch(ctx context.Context, repo, tarball string, logf func(string, ...any)) ([]CheckpatchResult, error) {
	src, err := FindSource(tarball)
	if err != nil {
		return nil, err
	}
	tree, err := src.Extract(ctx, logf)
	if err != nil {
		return nil, err
	}
	script := filepath.Join(tree, "scripts", "checkpatch.pl")
	if _, err := os.Stat(script); err != nil {
		return nil, fmt.Errorf("checkpatch: %w", err)
	}
	patches, err := readSeries(filepath.Join(repo, "kmod", "patches"))
	if err != nil {
		return nil, err
	}
	if len(patches) == 0 {
		return nil, errors.New("checkpatch: kmod/patches/series is empty")
	}
	var out []CheckpatchResult
	for _, p := range patches {
		// --no-tree would skip the checks that need the tree (MAINTAINERS,
		// headers); run from its top instead.
		cmd := exec.CommandContext(ctx, "perl", script, "--no-color", "--show-types", p)
		cmd.Dir = tree
		b, err := cmd.CombinedOutput()
		if ctx.Err() != nil {
			return out, ctx.Err()
		}
		r := parseCheckpatch(filepath.Base(p), string(b))
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			return out, fmt.Errorf("running %s: %w", script, err)
		}
		if err != nil && len(r.Problems) == 0 && len(r.Allowed) == 0 {
			// It failed without saying why in its own words.
			r.Problems = append(r.Problems, fmt.Sprintf("checkpatch.pl failed (%v) without a message", err))
		}
		out = append(out, r)
	}
	return out, nil
}
