package kernel

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"ldtlab/images/cache"
	"ldtlab/internal/atomicfile"
	"ldtlab/internal/fileutil"
	"ldtlab/internal/lines"
	"ldtlab/internal/procutil"
)

// recipeVersion changes whenever the way a kernel is built changes, so old
// cache entries are not reused for a different recipe.
const recipeVersion = "kernel-recipe-4"

// Options select what to build.
type Options struct {
	Repo    string    // repository root (images/config, kmod/)
	Config  string    // "debug" (default), "perf", "sanitize" or "coverage"
	Vanilla bool      // build without kmod/patches (A/B comparisons)
	Jobs    int       // make -j; 0 = CPUs+1
	Log     io.Writer // progress; nil = os.Stderr
	Tarball string    // override of the source tarball
	// Patches selects part of kmod/patches/series ("" = all of it) and
	// Without leaves patches out of that: see Select for the syntax.
	Patches string
	Without string
	// LDTOff builds the selected patches with CONFIG_LDT=n
	// (images/config/ldt-off.config instead of ldt.config): `labctl
	// series-check` proves that every prefix builds both ways.
	LDTOff bool
	// DebugInfo merges images/config/debuginfo.config last: DWARF in
	// vmlinux and the kernel's gdb scripts (lx-dmesg, lx-ps) kept in the
	// cache entry, for post-mortem debugging. Its own key and work
	// directory; without it the key is what it always was.
	DebugInfo bool
}

// Meta is written as meta.json into every kernel cache entry.
type Meta struct {
	Key           string    `json:"key"`
	SourcePackage string    `json:"source_package"`
	SourceVersion string    `json:"source_version"`
	KernelRelease string    `json:"kernel_release"`
	Config        string    `json:"config"`
	Vanilla       bool      `json:"vanilla"`
	Patches       []string  `json:"patches"`
	Fragments     []string  `json:"fragments"`
	Modules       []string  `json:"modules"`
	Compiler      string    `json:"compiler"`
	Selftests     []string  `json:"selftests"`
	SelftestsFail []string  `json:"selftests_failed,omitempty"`
	BuiltAt       time.Time `json:"built_at"`
	BuildSeconds  float64   `json:"build_seconds"`
	// Cold is true when the object directory started empty (a full build)
	// rather than from an earlier build of the same variant.
	Cold bool `json:"cold"`
	// Omitted are the series' patches this kernel was built without
	// (--patches/--without); empty when Patches is the whole series.
	Omitted []string `json:"omitted,omitempty"`
	// LDTConfig is CONFIG_LDT's value ("y" or "n"; "" on vanilla and on
	// entries built before it was recorded).
	LDTConfig string `json:"ldt_config,omitempty"`
	// Device is whether the patched tree has mm/ldt.c (/dev/ldt); nil on
	// entries built before it was recorded (all had it).
	Device *bool `json:"ldt_device,omitempty"`
	// DebugInfo: vmlinux has DWARF and the entry holds vmlinux-gdb.py
	// and scripts/gdb (Build.GDBScripts).
	DebugInfo bool `json:"debuginfo,omitempty"`
}

// Build is a complete kernel cache entry.
type Build struct {
	Dir     string
	BzImage string // bzImage
	Vmlinux string // vmlinux with symbols, for gdb
	// GDBScripts is vmlinux-gdb.py next to vmlinux (the lx- commands),
	// "" when the build has no debug info.
	GDBScripts string
	Modules    string // root of lib/modules/<release>
	// SelftestDir holds the static mm selftests built from the same tree.
	SelftestDir string
	Meta        Meta
}

// Variant names the build for humans: "debug", "perf-vanilla",
// "debug+0001-0005" (part of the series), "debug+0001-0005,ldt=n",
// "debug,debuginfo".
func (o Options) Variant() string {
	v := o.config()
	if o.Vanilla {
		v += "-vanilla"
	} else if o.Patches != "" || o.Without != "" {
		if sel, err := o.Selection(); err == nil && !sel.Full() {
			v += "+" + sel.Spec()
		} else if err != nil {
			v += "+?" + o.Patches
			if o.Without != "" {
				v += "-without-" + o.Without
			}
		}
	}
	if o.LDTOff && !o.Vanilla {
		if !strings.Contains(v, "+") {
			v += "+all"
		}
		v += ",ldt=n"
	}
	if o.DebugInfo {
		v += ",debuginfo"
	}
	return v
}

// workName is the persistent work directory (tree and objects) a build
// uses under cache/work: the full series keeps the config's own ("debug"),
// every other selection of a config shares one ("debug-subset"; with
// CONFIG_LDT=n "debug-ldt-n"), so walking the prefixes of the series
// rebuilds only what each step changes and never disturbs the default
// kernel's objects.
//
// The coverage config has its own: sharing debug's (it differs only in
// the counters of 16 objects) would make every switch between the two
// wait for, and undo, whatever series another user is building there.
func (p *plan) workName() string {
	v := p.opts.config()
	switch {
	case p.opts.Vanilla:
		v += "-vanilla"
	case p.opts.LDTOff:
		v += "-ldt-n"
	case !p.sel.Full():
		v += "-subset"
	}
	if p.opts.DebugInfo {
		// Apart: DWARF changes every object's flags, so sharing would
		// rebuild everything at each switch.
		v += "-debuginfo"
	}
	return v
}

func (o Options) config() string {
	if o.Config == "" {
		return "debug"
	}
	return o.Config
}

func (o Options) log() io.Writer {
	if o.Log == nil {
		return os.Stderr
	}
	return o.Log
}

// plan is everything a build needs, computed without building.
type plan struct {
	opts      Options
	src       *Source
	fragments []string // absolute paths, in merge order
	sel       Selection
	patches   []string // absolute paths of the applied patches, in series order
	// patchData is each patch as hashed into the key: what is applied,
	// even if the file changes while the build runs.
	patchData [][]byte
	modules   []string // absolute dirs holding a Kbuild file
	key       string
	compiler  string
	variant   string // o.Variant(), resolved once
}

// Configs are the kernel configurations the lab builds.
var Configs = []string{"debug", "perf", "sanitize", "coverage"}

// CheckConfig says whether name is one of Configs.
func CheckConfig(name string) error {
	if slices.Contains(Configs, name) {
		return nil
	}
	return fmt.Errorf("unknown kernel config %q: use %s", name, strings.Join(Configs, ", "))
}

func newPlan(o Options) (*plan, error) {
	if o.Repo == "" {
		return nil, errors.New("kernel build: repository root not set")
	}
	if err := CheckConfig(o.config()); err != nil {
		return nil, err
	}
	src, err := FindSource(o.Tarball)
	if err != nil {
		return nil, err
	}
	p := &plan{opts: o, src: src}
	cfgDir := filepath.Join(o.Repo, "images", "config")
	p.fragments = []string{filepath.Join(cfgDir, "base.config")}
	if o.config() == "sanitize" || o.config() == "coverage" {
		// The sanitizers and the coverage counters come on top of every
		// debug assertion.
		p.fragments = append(p.fragments, filepath.Join(cfgDir, "debug.config"))
	}
	p.fragments = append(p.fragments, filepath.Join(cfgDir, o.config()+".config"))
	if p.sel, err = o.Selection(); err != nil {
		return nil, err
	}
	if o.Vanilla && o.config() == "coverage" {
		return nil, errors.New("--config coverage counts the lines of the series: a vanilla kernel has none")
	}
	if o.Vanilla && o.LDTOff {
		return nil, errors.New("--vanilla has no CONFIG_LDT to turn off")
	}
	if !o.Vanilla {
		if o.LDTOff {
			p.fragments = append(p.fragments, filepath.Join(cfgDir, "ldt-off.config"))
		} else {
			p.fragments = append(p.fragments, filepath.Join(cfgDir, "ldt.config"))
		}
		for _, n := range p.sel.Applied {
			p.patches = append(p.patches, filepath.Join(o.Repo, "kmod", "patches", n))
		}
	}
	if o.DebugInfo {
		// Last, so it wins; hashed into the key like every fragment.
		p.fragments = append(p.fragments, filepath.Join(cfgDir, "debuginfo.config"))
	}
	if p.modules, err = moduleDirs(filepath.Join(o.Repo, "kmod")); err != nil {
		return nil, err
	}
	if out, err := exec.Command("gcc", "--version").Output(); err == nil {
		p.compiler = strings.SplitN(string(out), "\n", 2)[0]
	} else {
		return nil, errors.New("gcc not found: install Debian package build-essential (run `labctl setup`)")
	}

	k := cache.NewKey().
		AddString("recipe", recipeVersion).
		AddString("source", fmt.Sprintf("%s %s %d", SourcePackage, src.Version, src.Size)).
		AddString("config", o.config()).
		AddString("compiler", p.compiler).
		AddString("selftests", strings.Join(Selftests, ","))
	for _, f := range p.fragments {
		if _, err := os.Stat(f); errors.Is(err, os.ErrNotExist) && filepath.Base(f) == "ldt.config" {
			continue // optional until the LDT series lands
		}
		if err := k.AddFile("fragment/"+filepath.Base(f), f); err != nil {
			return nil, err
		}
	}
	for i, pt := range p.patches {
		b, err := os.ReadFile(pt)
		if err != nil {
			return nil, err
		}
		p.patchData = append(p.patchData, b)
		k.Add(fmt.Sprintf("patch/%03d/%s", i, filepath.Base(pt)), b)
	}
	for _, m := range p.modules {
		if err := k.AddTree("module/"+filepath.Base(m), m); err != nil {
			return nil, err
		}
	}
	if p.coverage() {
		// Which objects get counters is decided by code, not by a
		// fragment: its version is part of this config's key only, so
		// the other configs keep theirs.
		k.AddString("gcov", gcovRecipe)
	}
	p.key = k.Sum()[:24]
	p.variant = o.Variant()
	return p, nil
}

// readSeries returns the patches named in dir/series, in order. A missing
// or empty series is valid: the kernel is then vanilla with the lab config.
func readSeries(dir string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, "series"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		p := filepath.Join(dir, line)
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("kmod/patches/series line %d names %s, which does not exist", i+1, line)
		}
		out = append(out, p)
	}
	return out, nil
}

// moduleDirs lists kmod/* directories that contain a Kbuild file.
func moduleDirs(kmod string) ([]string, error) {
	entries, err := os.ReadDir(kmod)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		if _, err := os.Stat(filepath.Join(kmod, e.Name(), "Kbuild")); err == nil {
			out = append(out, filepath.Join(kmod, e.Name()))
		}
	}
	sort.Strings(out)
	return out, nil
}

// Key returns the cache key of the build o describes.
func Key(o Options) (string, error) {
	p, err := newPlan(o)
	if err != nil {
		return "", err
	}
	return p.key, nil
}

// Find returns the cached build for o, if any, without building.
func Find(o Options) (*Build, bool, error) {
	p, err := newPlan(o)
	if err != nil {
		return nil, false, err
	}
	dir, err := cache.Open("kernels").Check(p.key)
	if errors.Is(err, cache.ErrMissing) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("%w: `%s` rebuilds it", err, o.BuildCommand())
	}
	b, err := load(dir)
	return b, err == nil, err
}

// Drop removes the cached build for o (if any), so that the next Ensure
// builds it again. The persistent object directory is kept: the rebuild
// is incremental.
func Drop(o Options) error {
	p, err := newPlan(o)
	if err != nil {
		return err
	}
	return cache.Open("kernels").Remove(p.key)
}

// Ensure returns the build for o, building it when it is not cached.
func Ensure(ctx context.Context, o Options) (*Build, bool, error) {
	p, err := newPlan(o)
	if err != nil {
		return nil, false, err
	}
	dir, hit, err := cache.Open("kernels").Build(p.key, func(tmp string) error {
		return p.build(ctx, tmp)
	})
	if err != nil {
		return nil, false, err
	}
	b, err := load(dir)
	return b, hit, err
}

func load(dir string) (*Build, error) {
	b := &Build{
		Dir:     dir,
		BzImage: filepath.Join(dir, "bzImage"),
		Vmlinux: filepath.Join(dir, "vmlinux"),
		Modules: filepath.Join(dir, "modules"),

		SelftestDir: filepath.Join(dir, "selftests", "mm"),
	}
	if err := readJSON(filepath.Join(dir, "meta.json"), &b.Meta); err != nil {
		return nil, fmt.Errorf("reading kernel build metadata in %s: %w", dir, err)
	}
	if b.Meta.DebugInfo {
		b.GDBScripts = filepath.Join(dir, "vmlinux-gdb.py")
	}
	return b, nil
}

func (p *plan) logf(format string, args ...any) {
	fmt.Fprintf(p.opts.log(), "[kernel %s] %s\n", p.variant, fmt.Sprintf(format, args...))
}

// build produces the entry in dst. The source tree and object directory
// live in a per-variant work directory that persists across builds, so a
// changed patch recompiles only what it touches.
func (p *plan) build(ctx context.Context, dst string) error {
	start := time.Now()
	pristine, err := p.src.Extract(ctx, p.logf)
	if err != nil {
		return err
	}
	if !p.sel.Prefix() {
		if err := p.trialApply(ctx, pristine); err != nil {
			return err
		}
	}
	root, err := cache.Root()
	if err != nil {
		return err
	}
	work := filepath.Join(root, "work", p.workName())
	if err := cache.MkdirPrivate(work); err != nil {
		return err
	}
	unlock, err := cache.Lock(ctx, filepath.Join(work, ".lock"))
	if err != nil {
		return err
	}
	defer unlock()
	if n := reapOrphans(work); n > 0 {
		p.logf("stopped %d process(es) of an interrupted build still running in %s", n, work)
	}

	logPath := filepath.Join(work, "build.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	fail := func(what string, err error) error {
		keep := filepath.Join(root, "logs", p.key+".log")
		cache.MkdirPrivate(filepath.Dir(keep))
		logFile.Sync()
		fileutil.CopyFile(logPath, keep, 0o644)
		b, _ := os.ReadFile(logPath)
		return fmt.Errorf("kernel build (%s) failed while %s: %w%s\n--- last lines of %s ---\n%s", p.variant, what, err, fileutil.SpaceHint(work, 256<<20), keep, lines.Last(string(b), 30))
	}

	srcDir := filepath.Join(work, "src")
	outDir := filepath.Join(work, "out")
	_, statErr := os.Stat(filepath.Join(outDir, "vmlinux"))
	cold := statErr != nil
	if err := p.prepareTree(ctx, pristine, srcDir, outDir, logFile); err != nil {
		return fail("preparing the source tree", err)
	}
	if err := p.configure(ctx, srcDir, outDir, logFile); err != nil {
		return fail("configuring", err)
	}
	jobs := p.opts.Jobs
	if jobs <= 0 {
		jobs = runtime.NumCPU() + 1
	}
	p.logf("building %s %s (%s) with %d jobs; log: %s", SourcePackage, p.src.Version, p.variant, jobs, logPath)
	if err := p.make(ctx, srcDir, logFile, true, "O="+outDir, fmt.Sprintf("-j%d", jobs), "bzImage", "modules"); err != nil {
		return fail("compiling the kernel", err)
	}
	release, err := p.output(ctx, srcDir, "-s", "O="+outDir, "kernelrelease")
	if err != nil {
		return fail("reading kernelrelease", err)
	}
	modRoot := filepath.Join(dst, "modules")
	if err := p.make(ctx, srcDir, logFile, false, "O="+outDir, "INSTALL_MOD_PATH="+modRoot, "INSTALL_MOD_STRIP=1", "modules_install"); err != nil {
		return fail("installing modules", err)
	}
	var modNames []string
	extra := filepath.Join(modRoot, "lib", "modules", release, "extra")
	for _, m := range p.modules {
		name := filepath.Base(m)
		buildDir := filepath.Join(work, "ext", name)
		os.RemoveAll(buildDir)
		if err := copyTree(m, buildDir); err != nil {
			return fail("copying module "+name, err)
		}
		p.logf("building out-of-tree module kmod/%s", name)
		if err := p.make(ctx, srcDir, logFile, false, "-C", outDir, "M="+buildDir, fmt.Sprintf("-j%d", jobs), "modules"); err != nil {
			return fail("building module kmod/"+name, err)
		}
		kos, _ := filepath.Glob(filepath.Join(buildDir, "*.ko"))
		if err := os.MkdirAll(extra, 0o755); err != nil {
			return err
		}
		for _, ko := range kos {
			if err := fileutil.CopyFile(ko, filepath.Join(extra, filepath.Base(ko)), 0o644); err != nil {
				return err
			}
			modNames = append(modNames, filepath.Base(ko))
		}
	}
	if p.opts.DebugInfo {
		if err := p.keepGDBScripts(ctx, srcDir, outDir, dst, logFile); err != nil {
			return fail("installing the gdb scripts", err)
		}
	}
	stBuilt, stFailed, err := p.buildSelftests(ctx, srcDir, outDir, dst, logFile)
	if err != nil {
		return fail("building the mm selftests", err)
	}
	for src, name := range map[string]string{
		filepath.Join(outDir, "arch/x86/boot/bzImage"): "bzImage",
		filepath.Join(outDir, "vmlinux"):               "vmlinux",
		filepath.Join(outDir, ".config"):               "config",
		filepath.Join(outDir, "System.map"):            "System.map",
	} {
		if err := fileutil.CopyFile(src, filepath.Join(dst, name), 0o644); err != nil {
			return fail("copying "+name, err)
		}
	}
	if p.coverage() {
		if err := p.saveGcov(pristine, srcDir, outDir, dst); err != nil {
			return fail("saving the gcov notes", err)
		}
	}
	logFile.Sync()
	fileutil.CopyFile(logPath, filepath.Join(dst, "build.log"), 0o644)

	meta := Meta{
		Key: p.key, SourcePackage: SourcePackage, SourceVersion: p.src.Version,
		KernelRelease: release, Config: p.opts.config(), Vanilla: p.opts.Vanilla,
		Modules: modNames, Compiler: p.compiler, BuiltAt: time.Now().UTC(),
		Selftests: stBuilt, SelftestsFail: stFailed, Omitted: p.sel.Omitted,
		BuildSeconds: time.Since(start).Seconds(), Cold: cold, DebugInfo: p.opts.DebugInfo,
	}
	for _, pt := range p.patches {
		meta.Patches = append(meta.Patches, filepath.Base(pt))
	}
	if !p.opts.Vanilla {
		meta.LDTConfig = map[bool]string{true: "n", false: "y"}[p.opts.LDTOff]
		_, err := os.Stat(filepath.Join(srcDir, "mm", "ldt.c"))
		device := err == nil
		meta.Device = &device
	}
	for _, f := range p.fragments {
		if _, err := os.Stat(f); err == nil {
			meta.Fragments = append(meta.Fragments, filepath.Base(f))
		}
	}
	p.logf("built %s in %s", release, time.Since(start).Round(time.Second))
	return fileutil.WriteJSON(filepath.Join(dst, "meta.json"), meta)
}

// prepareTree makes srcDir a hard-link farm of the pristine tree with the
// series applied. Unchanged files keep the pristine mtimes, so make in the
// persistent outDir only rebuilds what the patches touch. Files patched in
// the previous build but not now are replaced by fresh copies with a new
// mtime, so their objects are rebuilt too.
func (p *plan) prepareTree(ctx context.Context, pristine, srcDir, outDir string, log io.Writer) error {
	record := filepath.Join(outDir, ".ldtlab-patched-files")
	prev := readLines(record)
	if err := os.RemoveAll(srcDir); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "cp", "-al", pristine, srcDir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("cp -al: %v: %s", err, out)
	}
	touched := map[string]bool{}
	snap, err := os.MkdirTemp("", "ldtlab-patches-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(snap)
	for i, orig := range p.patches {
		name := "kmod/patches/" + filepath.Base(orig)
		pt := filepath.Join(snap, filepath.Base(orig))
		if err := os.WriteFile(pt, p.patchData[i], 0o644); err != nil {
			return err
		}
		files, err := patchFiles(pt)
		if err != nil {
			return fmt.Errorf("reading %s: %w", name, err)
		}
		// Break hard links first: patch must never write through to the
		// pristine tree shared by every build.
		for _, f := range files {
			if err := unshare(filepath.Join(srcDir, f)); err != nil {
				return err
			}
			touched[f] = true
		}
		cmd := exec.CommandContext(ctx, "patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch", "-i", pt)
		cmd.Dir = srcDir
		out, err := cmd.CombinedOutput()
		fmt.Fprintf(log, "== patch %s\n%s", name, out)
		if err != nil {
			return fmt.Errorf("patch %s does not apply to %s %s: %v\n%s", name, SourcePackage, p.src.Version, err, lines.Last(string(out), 15))
		}
		p.logf("applied %s", name)
	}
	now := time.Now()
	for _, f := range prev {
		if touched[f] {
			continue
		}
		path := filepath.Join(srcDir, f)
		if _, err := os.Stat(path); err != nil {
			continue // a file the old series added
		}
		if err := unshare(path); err != nil {
			return err
		}
		os.Chtimes(path, now, now)
	}
	var list []string
	for f := range touched {
		list = append(list, f)
	}
	sort.Strings(list)
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	if p.coverage() {
		mk, err := p.profileSeriesObjects(srcDir, list)
		if err != nil {
			return fmt.Errorf("turning on gcov for the series' files: %w", err)
		}
		for _, f := range mk {
			if !slices.Contains(list, f) {
				list = append(list, f)
			}
		}
		sort.Strings(list)
	}
	if err := keepUnchangedMtimes(srcDir, filepath.Join(outDir, ".ldtlab-patched"), list, prev); err != nil {
		return err
	}
	return os.WriteFile(record, []byte(strings.Join(list, "\n")+"\n"), 0o644)
}

// keepUnchangedMtimes gives a patched file whose content is the same as in
// the previous build that build's mtime, so that re-applying a series (or
// changing one patch) recompiles only what really changed. saved holds
// the previous build's patched files with their mtimes.
func keepUnchangedMtimes(srcDir, saved string, touched, prev []string) error {
	for _, f := range prev {
		if !slices.Contains(touched, f) {
			os.Remove(filepath.Join(saved, f))
		}
	}
	for _, f := range touched {
		cur := filepath.Join(srcDir, f)
		old := filepath.Join(saved, f)
		b, err := os.ReadFile(cur)
		if err != nil {
			continue // deleted by the series
		}
		if ob, err := os.ReadFile(old); err == nil && bytes.Equal(b, ob) {
			if st, err := os.Stat(old); err == nil {
				os.Chtimes(cur, st.ModTime(), st.ModTime())
				continue
			}
		}
		st, err := os.Stat(cur)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(old), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(old, b, 0o644); err != nil {
			return err
		}
		os.Chtimes(old, st.ModTime(), st.ModTime())
	}
	return nil
}

// unshare replaces a hard link by a private copy (no-op if absent).
func unshare(path string) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, b, st.Mode().Perm())
}

// patchFiles lists the files a unified diff modifies (target side, -p1).
func patchFiles(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var files []string
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "+++ ") {
			continue
		}
		f := strings.Fields(strings.TrimPrefix(line, "+++ "))
		if len(f) == 0 || f[0] == "/dev/null" {
			continue
		}
		name := f[0]
		if i := strings.IndexByte(name, '/'); i >= 0 {
			name = name[i+1:]
		}
		files = append(files, name)
	}
	return files, nil
}

func (p *plan) configure(ctx context.Context, srcDir, outDir string, log io.Writer) error {
	if err := p.make(ctx, srcDir, log, false, "O="+outDir, "allnoconfig"); err != nil {
		return err
	}
	var frags []string
	for _, f := range p.fragments {
		if _, err := os.Stat(f); err == nil {
			frags = append(frags, f)
		}
	}
	args := append([]string{"-m", "-O", outDir, filepath.Join(outDir, ".config")}, frags...)
	cmd := exec.CommandContext(ctx, filepath.Join(srcDir, "scripts/kconfig/merge_config.sh"), args...)
	cmd.Dir = srcDir
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("merge_config.sh: %w", err)
	}
	if err := p.make(ctx, srcDir, log, false, "O="+outDir, "olddefconfig"); err != nil {
		return err
	}
	return VerifyConfig(filepath.Join(outDir, ".config"), frags)
}

// make runs make in srcDir, its output to log. With progress it prints a
// status line every few seconds, so a long build is visibly alive.
func (p *plan) make(ctx context.Context, srcDir string, log io.Writer, progress bool, args ...string) error {
	// make runs under a small shell guard in a process group of its own.
	// The guard gets SIGTERM when we die, even by SIGKILL (parent-death
	// signal), and then kills the whole group. A parent-death signal on
	// make itself is not enough: with O= the make we start only
	// re-invokes `make -C $O`, which does the real work and would go on
	// compiling as an orphan into the object directory, racing the next
	// build of the same tree.
	cmd := exec.Command("sh", append([]string{"-c", makeGuard, "ldtlab-make", "make"}, args...)...)
	cmd.Dir = srcDir
	cmd.Env = append(os.Environ(), "KBUILD_BUILD_TIMESTAMP=ldtlab", "KBUILD_BUILD_USER=ldtlab", "KBUILD_BUILD_HOST=ldtlab", "LC_ALL=C")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting make: %w", err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.follow(pr, log, progress)
	}()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		procutil.Terminate(-cmd.Process.Pid, 5*time.Second, done)
		err = ctx.Err()
	}
	pw.Close()
	wg.Wait()
	if err != nil {
		return fmt.Errorf("make %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

// makeGuard runs "$@" and, on SIGTERM/SIGHUP/SIGINT, kills its whole
// process group. A target cut short by SIGKILL has no .cmd file yet, so
// Kbuild rebuilds it next time: nothing half-built is ever trusted.
const makeGuard = `trap 'kill -KILL 0' TERM HUP INT; "$@" & wait $!`

// reapOrphans kills what still runs in the work tree of a variant (cwd
// inside it) — a build whose builder was killed before builds were
// guarded, or by other means — so that it cannot keep writing objects
// while this build prepares the tree. The caller holds the work lock, so
// no live build owns these processes. It returns how many it killed.
func reapOrphans(work string) int {
	work = filepath.Clean(work)
	self := os.Getpid()
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || pid == os.Getppid() {
			continue
		}
		cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if err != nil || (cwd != work && !strings.HasPrefix(cwd, work+"/")) {
			continue
		}
		// Only build tools: a shell someone opened in the tree stays.
		comm, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if isBuildTool(strings.TrimSpace(string(comm))) {
			pids = append(pids, pid)
		}
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	return len(pids)
}

func isBuildTool(comm string) bool {
	switch comm {
	case "make", "sh", "dash", "cc", "cc1", "as", "ld", "ld.bfd", "objtool", "fixdep", "modpost", "pahole", "perl", "python3":
		return true
	}
	return strings.Contains(comm, "gcc")
}

func (p *plan) follow(r io.Reader, log io.Writer, progress bool) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	start := time.Now()
	last := start
	steps := 0
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(log, line)
		if !progress {
			continue
		}
		if f := strings.Fields(line); len(f) >= 2 && strings.ToUpper(f[0]) == f[0] && len(f[0]) <= 8 {
			steps++
		}
		if time.Since(last) >= 10*time.Second {
			last = time.Now()
			p.logf("%s elapsed, %d steps, now: %s", time.Since(start).Round(time.Second), steps, strings.TrimSpace(line))
		}
	}
	io.Copy(io.Discard, r)
}

func (p *plan) output(ctx context.Context, srcDir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "make", args...)
	cmd.Dir = srcDir
	out, err := cmd.Output()
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}

func readLines(path string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

func copyTree(src, dst string) error {
	return filepath.Walk(src, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		target := filepath.Join(dst, rel)
		if info.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		return fileutil.CopyFile(path, target, info.Mode().Perm())
	})
}
