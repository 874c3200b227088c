package kernel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"ldtlab/internal/fileutil"
	"ldtlab/internal/lines"
	"ldtlab/internal/shquote"
)

// Selection is the part of kmod/patches/series a build applies: the
// whole series unless Options.Patches or Options.Without says otherwise.
type Selection struct {
	Series  []string // every patch of the series file, in order (base names)
	Applied []string // the patches applied, in series order
	Omitted []string // the series' patches left out, in series order
}

// Full reports whether every patch of the series is applied.
func (s Selection) Full() bool { return len(s.Omitted) == 0 }

// Prefix reports whether the applied patches are the first len(Applied)
// of the series: such a selection always applies when the series does.
func (s Selection) Prefix() bool {
	for i, a := range s.Applied {
		if i >= len(s.Series) || s.Series[i] != a {
			return false
		}
	}
	return true
}

// Spec is the shortest --patches value that selects exactly Applied:
// runs of consecutive patches as ranges ("0001-0005,0007").
func (s Selection) Spec() string { return spanSpec(s.Series, s.Applied) }

// Summary says in one line which patches a kernel has.
func (s Selection) Summary() string {
	switch {
	case len(s.Series) == 0:
		return "no patch (the series is empty)"
	case s.Full():
		return fmt.Sprintf("all %d patches of the series (%s)", len(s.Series), spanSpec(s.Series, s.Series))
	}
	return fmt.Sprintf("%d of %d patches: %s (without %s)", len(s.Applied), len(s.Series), s.Spec(), spanSpec(s.Series, s.Omitted))
}

// spanSpec writes names (a subsequence of series) as comma-separated
// runs of consecutive series entries, each by patch number.
func spanSpec(series, names []string) string {
	in := map[string]bool{}
	for _, n := range names {
		in[n] = true
	}
	var parts []string
	for i := 0; i < len(series); i++ {
		if !in[series[i]] {
			continue
		}
		j := i
		for j+1 < len(series) && in[series[j+1]] {
			j++
		}
		if i == j {
			parts = append(parts, PatchID(series[i]))
		} else {
			parts = append(parts, PatchID(series[i])+"-"+PatchID(series[j]))
		}
		i = j
	}
	return strings.Join(parts, ",")
}

// PatchID is how a patch is named on the command line: its number
// ("0006" for 0006-mm-userfaultfd-....patch), or its file name when it
// has none.
func PatchID(name string) string {
	if n := leadingDigits(name); n != "" {
		return n
	}
	return name
}

func leadingDigits(s string) string {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return s[:i]
}

// ReadSeries returns the base names of the patches in kmod/patches/series
// of repo, in order.
func ReadSeries(repo string) ([]string, error) {
	paths, err := readSeries(filepath.Join(repo, "kmod", "patches"))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range paths {
		out = append(out, filepath.Base(p))
	}
	return out, nil
}

// Select resolves --patches and --without against the series: both are
// comma-separated lists of patches, each a number ("6", "0006"), a file
// name (with or without ".patch") or a range of those ("0001-0005",
// "0003-" to the end, "-0005" from the start). An empty patches selects
// the whole series; without then removes from it.
func Select(series []string, patches, without string) (Selection, error) {
	sel := Selection{Series: series}
	if len(series) == 0 {
		if strings.TrimSpace(patches) != "" || strings.TrimSpace(without) != "" {
			return sel, errors.New("kmod/patches/series is empty: there is no patch to select")
		}
		return sel, nil
	}
	chosen := make([]bool, len(series))
	if strings.TrimSpace(patches) == "" {
		for i := range chosen {
			chosen[i] = true
		}
	} else {
		idx, err := parseSpec(series, patches, "--patches")
		if err != nil {
			return sel, err
		}
		for _, i := range idx {
			chosen[i] = true
		}
	}
	if strings.TrimSpace(without) != "" {
		idx, err := parseSpec(series, without, "--without")
		if err != nil {
			return sel, err
		}
		for _, i := range idx {
			chosen[i] = false
		}
	}
	for i, n := range series {
		if chosen[i] {
			sel.Applied = append(sel.Applied, n)
		} else {
			sel.Omitted = append(sel.Omitted, n)
		}
	}
	if len(sel.Applied) == 0 {
		return sel, fmt.Errorf("--patches %q --without %q selects no patch: use --vanilla for a kernel without the series", patches, without)
	}
	return sel, nil
}

// parseSpec returns the series indexes a comma list selects.
func parseSpec(series []string, spec, flag string) ([]int, error) {
	var out []int
	for _, item := range strings.Split(spec, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			return nil, fmt.Errorf("%s %q: an empty item (a stray comma?)", flag, spec)
		}
		if i, ok := lookupPatch(series, item); ok {
			out = append(out, i)
			continue
		}
		lo, hi, err := parseRange(series, item)
		if err != nil {
			return nil, fmt.Errorf("%s %q: %w", flag, spec, err)
		}
		for i := lo; i <= hi; i++ {
			out = append(out, i)
		}
	}
	return out, nil
}

// parseRange reads "A-B", "A-" or "-B". File names contain dashes too,
// so every dash is tried as the separator; exactly one must fit.
func parseRange(series []string, item string) (lo, hi int, err error) {
	type span struct{ lo, hi int }
	var fits []span
	for i := 0; i < len(item); i++ {
		if item[i] != '-' {
			continue
		}
		left, right := item[:i], item[i+1:]
		l, r := 0, len(series)-1
		ok := true
		if left != "" {
			l, ok = lookupPatch(series, left)
		}
		if ok && right != "" {
			r, ok = lookupPatch(series, right)
		}
		if ok && (left != "" || right != "") {
			fits = append(fits, span{l, r})
		}
	}
	switch {
	case len(fits) == 0:
		return 0, 0, fmt.Errorf("no patch %q in kmod/patches/series (it has %s)", item, spanSpec(series, series))
	case len(fits) > 1:
		return 0, 0, fmt.Errorf("%q is ambiguous: write the range by patch numbers", item)
	case fits[0].lo > fits[0].hi:
		return 0, 0, fmt.Errorf("range %q runs backwards (%s comes after %s in the series)", item, PatchID(series[fits[0].lo]), PatchID(series[fits[0].hi]))
	}
	return fits[0].lo, fits[0].hi, nil
}

// lookupPatch finds one patch by number or file name.
func lookupPatch(series []string, s string) (int, bool) {
	for i, n := range series {
		if s == n || s+".patch" == n {
			return i, true
		}
	}
	if s == "" || leadingDigits(s) != s {
		return 0, false
	}
	want, err := strconv.Atoi(s)
	if err != nil {
		return 0, false
	}
	for i, n := range series {
		if d := leadingDigits(n); d != "" {
			if got, err := strconv.Atoi(d); err == nil && got == want {
				return i, true
			}
		}
	}
	return 0, false
}

// Selection resolves o's --patches and --without against the series in
// o.Repo. A vanilla build selects nothing.
func (o Options) Selection() (Selection, error) {
	if o.Vanilla {
		if o.Patches != "" || o.Without != "" {
			return Selection{}, errors.New("--vanilla builds without the series: it cannot be combined with --patches or --without")
		}
		return Selection{}, nil
	}
	series, err := ReadSeries(o.Repo)
	if err != nil {
		return Selection{}, err
	}
	return Select(series, o.Patches, o.Without)
}

// trialApply applies the selected patches, in order, to copies of only
// the files they touch: a cheap proof that a selection which is not a
// prefix of the series applies, made before any build starts. On failure
// it names the left-out patches that change the same files.
func (p *plan) trialApply(ctx context.Context, pristine string) error {
	tmp, err := os.MkdirTemp("", "ldtlab-trial-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	copied := map[string]bool{}
	for i, pt := range p.patches {
		name := filepath.Base(pt)
		path := filepath.Join(tmp, ".patches", name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, p.patchData[i], 0o644); err != nil {
			return err
		}
		files, err := patchFiles(path)
		if err != nil {
			return err
		}
		for _, f := range files {
			if copied[f] {
				continue
			}
			copied[f] = true
			if _, err := os.Stat(filepath.Join(pristine, f)); err != nil {
				continue // created by a patch
			}
			if err := os.MkdirAll(filepath.Dir(filepath.Join(tmp, f)), 0o755); err != nil {
				return err
			}
			if err := fileutil.CopyFile(filepath.Join(pristine, f), filepath.Join(tmp, f), 0o644); err != nil {
				return err
			}
		}
		cmd := exec.CommandContext(ctx, "patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch", "-i", path)
		cmd.Dir = tmp
		out, err := cmd.CombinedOutput()
		if err == nil {
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var needs []string
		for _, om := range p.sel.Omitted {
			if p.sel.index(om) > p.sel.index(name) {
				continue
			}
			ofiles, _ := patchFiles(filepath.Join(p.opts.Repo, "kmod", "patches", om))
			var common []string
			for _, f := range ofiles {
				if containsString(files, f) && !containsString(common, f) {
					common = append(common, f)
				}
			}
			if len(common) > 0 {
				needs = append(needs, fmt.Sprintf("%s (changes %s too)", PatchID(om), strings.Join(common, ", ")))
			}
		}
		hint := ""
		if len(needs) > 0 {
			hint = "; it probably needs the left-out " + strings.Join(needs, "; ")
		}
		return &SelectionError{fmt.Errorf("the series cannot apply --patches %s: kmod/patches/%s does not apply without the patches left out (%s)%s\n%s",
			p.sel.Spec(), name, spanSpec(p.sel.Series, p.sel.Omitted), hint, patchComplaints(string(out)))}
	}
	return nil
}

// SelectionError is a --patches/--without selection the series cannot
// apply: the user's mistake, not the lab's.
type SelectionError struct{ Err error }

func (e *SelectionError) Error() string { return e.Err.Error() }
func (e *SelectionError) Unwrap() error { return e.Err }

// patchComplaints keeps the lines of patch(1)'s output that say what
// failed, or its last lines.
func patchComplaints(out string) string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "|") {
			continue // patch quoting the patch's own text
		}
		low := strings.ToLower(l)
		for _, w := range []string{"can't find file", "no file to patch", "failed", "hunks ignored", "reversed", "saving rejects", "malformed"} {
			if strings.Contains(low, w) {
				keep = append(keep, "  "+strings.TrimSpace(l))
				break
			}
		}
	}
	if len(keep) == 0 {
		return lines.Last(out, 10)
	}
	return strings.Join(keep, "\n")
}

func (s Selection) index(name string) int {
	for i, n := range s.Series {
		if n == name {
			return i
		}
	}
	return -1
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Flags are the labctl flags that select this kernel, each with a
// leading space ("" for the default debug kernel of the whole series):
// what a reproduction command must carry.
func (o Options) Flags() string {
	var f string
	if o.config() != "debug" {
		f += " --config " + shquote.Word(o.config())
	}
	if o.Vanilla {
		f += " --vanilla"
	}
	if o.Patches != "" || o.Without != "" {
		if sel, err := o.Selection(); err == nil {
			if !sel.Full() {
				f += " --patches " + shquote.Word(sel.Spec())
			}
		} else {
			if o.Patches != "" {
				f += " --patches " + shquote.Word(o.Patches)
			}
			if o.Without != "" {
				f += " --without " + shquote.Word(o.Without)
			}
		}
	}
	if o.LDTOff {
		f += " --ldt=n"
	}
	if o.DebugInfo {
		f += " --debuginfo"
	}
	return f
}

// BuildCommand is the labctl command line that builds this kernel.
func (o Options) BuildCommand() string {
	return "labctl build --config " + o.config() + strings.Replace(o.Flags(), " --config "+o.config(), "", 1)
}

// PatchSummary says in one line which patches the kernel was built with.
func (m Meta) PatchSummary() string {
	var s string
	switch {
	case m.Vanilla:
		return "vanilla (no LDT patch)"
	case len(m.Omitted) == 0:
		s = fmt.Sprintf("all %d patches of the series", len(m.Patches))
		if len(m.Patches) > 0 {
			s += " (" + spanSpec(m.Patches, m.Patches) + ")"
		}
	default:
		series := m.series()
		s = fmt.Sprintf("%d of %d patches: %s (without %s)", len(m.Patches), len(series), spanSpec(series, m.Patches), spanSpec(series, m.Omitted))
	}
	if m.LDTConfig == "n" {
		s += ", CONFIG_LDT=n"
	}
	return s
}

// series rebuilds the series order from Patches and Omitted (both in
// series order; patch numbers order them).
func (m Meta) series() []string {
	all := append(append([]string(nil), m.Patches...), m.Omitted...)
	sort.SliceStable(all, func(i, j int) bool { return all[i] < all[j] })
	return all
}

// HasDevice reports whether the kernel has /dev/ldt: the series applied
// with CONFIG_LDT=y, through the patch that adds mm/ldt.c.
func (m Meta) HasDevice() bool {
	if m.Vanilla || len(m.Patches) == 0 || m.LDTConfig == "n" {
		return false
	}
	return m.Device == nil || *m.Device
}
