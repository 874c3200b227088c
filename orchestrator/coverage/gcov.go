package coverage

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"ldtlab/internal/fileutil"
	"ldtlab/internal/lines"
)

// GcovDoc is one document of `gcov --json-format --stdout` (GCC 9 and
// later; format_version "1" in GCC 12): the counts of one object.
type GcovDoc struct {
	GCCVersion    string     `json:"gcc_version"`
	FormatVersion string     `json:"format_version"`
	CWD           string     `json:"current_working_directory"`
	DataFile      string     `json:"data_file"`
	Files         []GcovFile `json:"files"`
}

// GcovFile is one source file of an object (its .c and every header
// whose code it holds).
type GcovFile struct {
	File      string     `json:"file"`
	Lines     []GcovLine `json:"lines"`
	Functions []GcovFunc `json:"functions"`
}

// GcovLine is one line with code: how often its blocks ran.
type GcovLine struct {
	Line     int    `json:"line_number"`
	Count    uint64 `json:"count"`
	Function string `json:"function_name"`
}

// GcovFunc is one function of a file.
type GcovFunc struct {
	Name      string `json:"name"`
	Demangled string `json:"demangled_name"`
	StartLine int    `json:"start_line"`
	EndLine   int    `json:"end_line"`
	Count     uint64 `json:"execution_count"`
}

// ParseGcovJSON reads gcov's JSON output: one document, or (several
// .gcda files in one gcov call) one per line.
func ParseGcovJSON(b []byte) ([]GcovDoc, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	var docs []GcovDoc
	for dec.More() {
		var d GcovDoc
		if err := dec.Decode(&d); err != nil {
			return nil, fmt.Errorf("parsing gcov JSON (document %d): %w", len(docs)+1, err)
		}
		if d.FormatVersion == "" || d.Files == nil {
			return nil, fmt.Errorf("gcov JSON document %d has no format_version or files: not gcov --json-format output", len(docs)+1)
		}
		docs = append(docs, d)
	}
	if len(docs) == 0 {
		return nil, fmt.Errorf("gcov printed no JSON")
	}
	return docs, nil
}

// RunGcov runs the host's gcov on one object: notes is its .gcno (from
// the kernel build), data its .gcda (from the guest's debugfs). gcov must
// be the one of the compiler that built the kernel (the build key covers
// `gcc --version`; gcov refuses notes of another version).
func RunGcov(ctx context.Context, notes, data string) (*GcovDoc, error) {
	dir, err := os.MkdirTemp("", "ldtlab-gcov-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	base := strings.TrimSuffix(filepath.Base(notes), ".gcno")
	if err := fileutil.CopyFile(notes, filepath.Join(dir, base+".gcno"), 0o600); err != nil {
		return nil, err
	}
	if err := fileutil.CopyFile(data, filepath.Join(dir, base+".gcda"), 0o600); err != nil {
		return nil, err
	}
	// --json-format with --stdout needs no source: the counts and line
	// numbers come from the notes and data alone.
	cmd := exec.CommandContext(ctx, "gcov", "--json-format", "--stdout", "--object-directory", dir, base+".c")
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("gcov on %s: %v: %s", base, err, lines.Last(stderr.String(), 5))
	}
	docs, err := ParseGcovJSON(out)
	if err != nil {
		return nil, fmt.Errorf("gcov on %s: %w (stderr: %s)", base, err, lines.Last(stderr.String(), 5))
	}
	return &docs[0], nil
}

// LineCount is what the profiled objects say about one source line.
type LineCount struct {
	Count    uint64
	Function string
}

// Counts are line counts merged over objects: file (relative to the
// kernel tree) → line → count. A header line is in several objects; it
// ran if it ran in any.
type Counts map[string]map[int]*LineCount

// Add merges doc into c. srcDir is the tree the kernel was compiled from
// (gcov names files under it, or relative to the object directory); a
// file outside it (a generated header) is left out.
func (c Counts) Add(doc *GcovDoc, srcDir string) {
	for _, f := range doc.Files {
		rel, ok := relToTree(f.File, doc.CWD, srcDir)
		if !ok {
			continue
		}
		m := c[rel]
		if m == nil {
			m = map[int]*LineCount{}
			c[rel] = m
		}
		for _, l := range f.Lines {
			lc := m[l.Line]
			if lc == nil {
				lc = &LineCount{}
				m[l.Line] = lc
			}
			lc.Count += l.Count
			if fn := functionAt(f.Functions, l.Line); fn != "" {
				lc.Function = fn
			} else if lc.Function == "" {
				lc.Function = l.Function
			}
		}
	}
}

// functionAt is the innermost function of fns whose body holds line.
func functionAt(fns []GcovFunc, line int) string {
	best, span := "", -1
	for _, f := range fns {
		if f.StartLine <= line && line <= f.EndLine && (span < 0 || f.EndLine-f.StartLine < span) {
			best, span = f.Demangled, f.EndLine-f.StartLine
			if best == "" {
				best = f.Name
			}
		}
	}
	return best
}

func relToTree(file, cwd, srcDir string) (string, bool) {
	if !filepath.IsAbs(file) {
		file = filepath.Join(cwd, file)
	}
	file = filepath.Clean(file)
	rel, err := filepath.Rel(filepath.Clean(srcDir), file)
	if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
		return "", false
	}
	return rel, true
}
