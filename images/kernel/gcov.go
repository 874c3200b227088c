package kernel

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"ldtlab/internal/fileutil"
)

// gcovRecipe versions how the coverage config picks and saves its
// profiled objects; it is hashed into that config's key only.
const gcovRecipe = "gcov-2: GCOV_PROFILE_<obj>.o := y and -fno-early-inlining for every .c the series touches; gcov/ holds notes, patched and pristine sources, patches"

// GcovDir is the directory of a coverage kernel's entry that holds what
// the host needs to map the guest's counters back onto the series.
const GcovDir = "gcov"

// GcovManifest is gcov/manifest.json.
type GcovManifest struct {
	// ObjDir is the object directory the kernel was built in: the guest
	// exposes a profiled object's counters as
	// /sys/kernel/debug/gcov/<ObjDir>/<dir>/<name>.gcda.
	ObjDir string `json:"obj_dir"`
	// SrcDir is the source tree as the compiler saw it (gcov names files
	// under it).
	SrcDir string `json:"src_dir"`
	// Objects are the profiled objects, relative to the tree ("mm/memory.o").
	Objects []string `json:"objects"`
	// Files are every file the series touches, relative to the tree; each
	// is under gcov/src/ as built and, unless the series adds it, under
	// gcov/pristine/ as in the unpatched source.
	Files []string `json:"files"`
	// Patches are the applied patches, in order, under gcov/patches/.
	Patches []string `json:"patches"`
	// Makefiles are the Makefiles the build edited to turn counters on.
	Makefiles []string `json:"makefiles"`
}

func (p *plan) coverage() bool { return p.opts.config() == "coverage" && !p.opts.Vanilla }

// seriesCFiles are the .c files among the files the series touches.
func seriesCFiles(touched []string) []string {
	var out []string
	for _, f := range touched {
		if strings.HasSuffix(f, ".c") {
			out = append(out, f)
		}
	}
	sort.Strings(out)
	return out
}

// profileSeriesObjects turns gcov on for each .c file the series touches
// by appending GCOV_PROFILE_<name>.o := y to the Kbuild file of its
// directory, the per-object switch Kbuild documents (kernel/gcov/Kconfig).
// An edit of the tree rather than a make variable on the command line: a
// command-line GCOV_PROFILE_core.o would reach every core.o in the kernel.
//
// Those objects are also compiled with -fno-early-inlining: GCC inlines
// small functions before it instruments, and gcov then credits the
// inlined copy's lines to nobody (a static helper of mm/memory.c that ran
// shows as never executed, or as no code at all). Instrumented first, a
// function keeps its counters when it is inlined later. Only the profiled
// objects change; always_inline functions are still inlined.
// It returns the edited files.
func (p *plan) profileSeriesObjects(srcDir string, touched []string) ([]string, error) {
	byDir := map[string][]string{}
	for _, f := range seriesCFiles(touched) {
		byDir[filepath.Dir(f)] = append(byDir[filepath.Dir(f)], strings.TrimSuffix(filepath.Base(f), ".c")+".o")
	}
	var edited []string
	for dir, objs := range byDir {
		mk := filepath.Join(dir, "Kbuild")
		if _, err := os.Stat(filepath.Join(srcDir, mk)); err != nil {
			mk = filepath.Join(dir, "Makefile")
		}
		path := filepath.Join(srcDir, mk)
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("no Kbuild file for %s: %w", dir, err)
		}
		var add strings.Builder
		add.WriteString("\n# ldtlab coverage config: gcov counters for the files the LDT series touches\n")
		for _, o := range objs {
			fmt.Fprintf(&add, "GCOV_PROFILE_%s := y\nCFLAGS_%s += -fno-early-inlining\n", o, o)
		}
		if err := unshare(path); err != nil {
			return nil, err
		}
		if err := os.WriteFile(path, append(b, add.String()...), 0o644); err != nil {
			return nil, err
		}
		edited = append(edited, mk)
	}
	sort.Strings(edited)
	p.logf("gcov counters on for %d objects (%s)", len(seriesCFiles(touched)), strings.Join(edited, ", "))
	return edited, nil
}

// saveGcov copies into dst/gcov what the host needs to turn the guest's
// .gcda files into line counts on the series: the .gcno notes of every
// profiled object, every touched file as built and as in the pristine
// source, and the patches.
func (p *plan) saveGcov(pristine, srcDir, outDir, dst string) error {
	touched := readLines(filepath.Join(outDir, ".ldtlab-patched-files"))
	m := GcovManifest{ObjDir: outDir, SrcDir: srcDir}
	g := filepath.Join(dst, GcovDir)
	for _, f := range touched {
		m.Files = append(m.Files, f)
		if err := copyIfExists(filepath.Join(srcDir, f), filepath.Join(g, "src", f)); err != nil {
			return err
		}
		if err := copyIfExists(filepath.Join(pristine, f), filepath.Join(g, "pristine", f)); err != nil {
			return err
		}
	}
	for _, f := range seriesCFiles(touched) {
		obj := strings.TrimSuffix(f, ".c") + ".o"
		gcno := strings.TrimSuffix(f, ".c") + ".gcno"
		if _, err := os.Stat(filepath.Join(outDir, obj)); err != nil {
			continue // not built in this config
		}
		// CopyFile makes no parents, and nothing above made notes/<dir>.
		if err := os.MkdirAll(filepath.Join(g, "notes", filepath.Dir(gcno)), 0o755); err != nil {
			return err
		}
		if err := fileutil.CopyFile(filepath.Join(outDir, gcno), filepath.Join(g, "notes", gcno), 0o644); err != nil {
			return fmt.Errorf("%s was built without gcov notes: %w", obj, err)
		}
		m.Objects = append(m.Objects, obj)
	}
	if len(m.Objects) == 0 {
		return errors.New("no profiled object was built: the coverage config has nothing to measure")
	}
	for i, pt := range p.patches {
		name := filepath.Base(pt)
		m.Patches = append(m.Patches, name)
		if err := os.MkdirAll(filepath.Join(g, "patches"), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(g, "patches", name), p.patchData[i], 0o644); err != nil {
			return err
		}
	}
	for _, f := range touched {
		if (strings.HasSuffix(f, "Makefile") || strings.HasSuffix(f, "Kbuild")) && !p.seriesTouches(f) {
			m.Makefiles = append(m.Makefiles, f)
		}
	}
	p.logf("saved gcov notes of %d objects in %s", len(m.Objects), g)
	return fileutil.WriteJSON(filepath.Join(g, "manifest.json"), m)
}

// seriesTouches says whether a patch of the series (not the gcov edit)
// names f.
func (p *plan) seriesTouches(f string) bool {
	for _, b := range p.patchData {
		if strings.Contains(string(b), "\n+++ b/"+f+"\n") {
			return true
		}
	}
	return false
}

func copyIfExists(src, dst string) error {
	st, err := os.Stat(src)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return fileutil.CopyFile(src, dst, st.Mode().Perm())
}

// LoadGcovManifest reads a coverage kernel's gcov/manifest.json.
func (b *Build) LoadGcovManifest() (*GcovManifest, error) {
	var m GcovManifest
	path := filepath.Join(b.Dir, GcovDir, "manifest.json")
	if err := readJSON(path, &m); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("kernel %s (config %s) has no gcov notes: build it with `labctl build --config coverage`", b.Meta.Key, b.Meta.Config)
		}
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return &m, nil
}
