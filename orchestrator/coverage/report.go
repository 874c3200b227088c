package coverage

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// Report is DIR/coverage.json.
type Report struct {
	Started time.Time `json:"started"`
	Seconds float64   `json:"seconds"`
	// Provenance: what ran where.
	Commit        string `json:"ldtlab_commit"`
	SeriesSHA256  string `json:"series_sha256"`
	KernelKey     string `json:"kernel_key"`
	KernelRelease string `json:"kernel_release"`
	KernelConfig  string `json:"kernel_config"`
	Accel         string `json:"accel"`
	Host          string `json:"host"`
	Quick         bool   `json:"quick"`
	Jobs          []Job  `json:"jobs"`

	// SeriesLines are the executable lines the series adds or changes
	// (lines gcov has code for in some profiled object); Executed is how
	// many of them ran at least once.
	SeriesLines int     `json:"series_lines"`
	Executed    int     `json:"executed"`
	Percent     float64 `json:"percent"`
	PerPatch    []Group `json:"per_patch"`
	PerFile     []Group `json:"per_file"`
	PerFunction []Group `json:"per_function"`
	// NotBuilt are changed .c files this config does not compile (their
	// lines cannot run here); NoLineData counts, per header, changed
	// lines that no profiled object has code for: declarations, macros
	// (their code is counted where they expand), code under a config
	// this kernel lacks (the CONFIG_LDT=n fallbacks) and header code only
	// unprofiled objects use.
	NotBuilt   []FileLines `json:"not_built,omitempty"`
	NoLineData []FileLines `json:"no_line_data,omitempty"`
	Unexecuted []Line      `json:"unexecuted"`
	// Ran are the series lines that ran (file, line, patch, function;
	// no text): what the soak unions across snapshots and reboots. Not
	// in coverage.json, which counts them already.
	Ran []Line `json:"-"`
	// Unexplained counts the unexecuted lines without a reason.
	Unexplained int `json:"unexplained"`
	// StaleReasons are reasons that matched no unexecuted line.
	StaleReasons []string `json:"stale_reasons,omitempty"`
	// Problems: a job that failed or a kernel report. The counts stand
	// (the code ran), but the run is not clean.
	Problems []string `json:"problems,omitempty"`
}

// Job is one job of the run as it ended.
type Job struct {
	Name    string  `json:"name"`
	Command string  `json:"command,omitempty"`
	Verdict string  `json:"verdict"`
	Detail  string  `json:"detail,omitempty"`
	Seconds float64 `json:"seconds"`
}

// Group is a count of series lines: per patch, file or function.
type Group struct {
	Name        string  `json:"name"`
	SeriesLines int     `json:"series_lines"`
	Executed    int     `json:"executed"`
	Percent     float64 `json:"percent"`
}

// FileLines is a number of lines of one file.
type FileLines struct {
	File  string `json:"file"`
	Lines int    `json:"lines"`
}

// Line is one series line.
type Line struct {
	File     string `json:"file"`
	Line     int    `json:"line"`
	Text     string `json:"text"`
	Patch    string `json:"patch"`
	Function string `json:"function,omitempty"`
	Count    uint64 `json:"count"`
	// Reason is why it did not run (docs/coverage.reasons), "" when
	// nobody has said yet.
	Reason string `json:"reason,omitempty"`
}

// Map counts the series lines of origins (SeriesLines) in counts. built
// says which changed .c files were compiled (had an object).
func Map(r *Report, origins map[string]*Origin, counts Counts, built map[string]bool) {
	patches := map[string]*Group{}
	files := map[string]*Group{}
	funcs := map[string]*Group{}
	var patchOrder []string
	add := func(m map[string]*Group, name string, ran bool) {
		g := m[name]
		if g == nil {
			g = &Group{Name: name}
			m[name] = g
		}
		g.SeriesLines++
		if ran {
			g.Executed++
		}
	}
	r.SeriesLines, r.Executed = 0, 0
	r.Unexecuted, r.Ran, r.NotBuilt, r.NoLineData = nil, nil, nil, nil
	for _, f := range Sorted(origins) {
		o := origins[f]
		notBuilt, noData := 0, 0
		for i, p := range o.Patch {
			if p == "" {
				continue
			}
			if _, seen := patches[p]; !seen && !contains(patchOrder, p) {
				patchOrder = append(patchOrder, p)
			}
			if strings.HasSuffix(f, ".c") && !built[f] {
				if strings.TrimSpace(o.Lines[i]) != "" {
					notBuilt++
				}
				continue
			}
			lc := counts[f][i+1]
			if lc == nil {
				if isCodeLike(f, o.Lines[i]) {
					noData++
				}
				continue
			}
			ran := lc.Count > 0
			r.SeriesLines++
			if ran {
				r.Executed++
			}
			add(patches, p, ran)
			add(files, f, ran)
			fn := lc.Function
			if fn == "" {
				fn = "(outside any function)"
			}
			add(funcs, f+":"+fn, ran)
			if !ran {
				r.Unexecuted = append(r.Unexecuted, Line{File: f, Line: i + 1, Text: o.Lines[i], Patch: p, Function: lc.Function})
			} else {
				r.Ran = append(r.Ran, Line{File: f, Line: i + 1, Patch: p, Function: lc.Function, Count: lc.Count})
			}
		}
		if notBuilt > 0 {
			r.NotBuilt = append(r.NotBuilt, FileLines{f, notBuilt})
		}
		if noData > 0 && !strings.HasSuffix(f, ".c") {
			r.NoLineData = append(r.NoLineData, FileLines{f, noData})
		}
	}
	r.Percent = pct(r.Executed, r.SeriesLines)
	sort.Strings(patchOrder)
	r.PerPatch = nil
	for _, p := range patchOrder {
		g := patches[p]
		if g == nil {
			g = &Group{Name: p} // only lines without code, or not built
		}
		r.PerPatch = append(r.PerPatch, *g)
	}
	r.PerFile = groups(files)
	r.PerFunction = groups(funcs)
	for _, gs := range [][]Group{r.PerPatch, r.PerFile, r.PerFunction} {
		for i := range gs {
			gs[i].Percent = pct(gs[i].Executed, gs[i].SeriesLines)
		}
	}
}

// isCodeLike leaves out what can never have code: blank lines, comments,
// preprocessor lines other than macro bodies, lone braces. Only for the
// no-line-data count of headers; .c files are judged by gcov alone.
func isCodeLike(file, s string) bool {
	t := strings.TrimSpace(s)
	switch {
	case t == "", t == "{", t == "}", t == "};",
		strings.HasPrefix(t, "/*"), strings.HasPrefix(t, "*"), strings.HasPrefix(t, "//"),
		strings.HasPrefix(t, "#include"), strings.HasPrefix(t, "#endif"), strings.HasPrefix(t, "#else"),
		strings.HasPrefix(t, "#if"):
		return false
	}
	return strings.HasSuffix(file, ".h")
}

func groups(m map[string]*Group) []Group {
	var out []Group
	for _, k := range Sorted(m) {
		out = append(out, *m[k])
	}
	return out
}

func pct(a, b int) float64 {
	if b == 0 {
		return 0
	}
	return float64(int(1000*float64(a)/float64(b)+0.5)) / 10
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// Markdown writes DIR/coverage.md: the provenance, the numbers, and every
// series line that did not run, with file:line and its text.
func Markdown(w io.Writer, r *Report) {
	fmt.Fprintf(w, "# Line coverage of the LDT series\n\n")
	fmt.Fprintf(w, "| | |\n|---|---|\n")
	fmt.Fprintf(w, "| ldtlab commit | `%s` |\n", r.Commit)
	fmt.Fprintf(w, "| series sha256 | `%s` |\n", r.SeriesSHA256)
	fmt.Fprintf(w, "| kernel | %s, config %s, key `%s` |\n", r.KernelRelease, r.KernelConfig, r.KernelKey)
	fmt.Fprintf(w, "| accelerator | %s |\n", r.Accel)
	fmt.Fprintf(w, "| host | %s |\n", r.Host)
	mode := "full"
	if r.Quick {
		mode = "quick"
	}
	fmt.Fprintf(w, "| run | %s, %s, %s |\n\n", mode, r.Started.Format(time.RFC3339), (time.Duration(r.Seconds) * time.Second).String())
	fmt.Fprintf(w, "**%d of %d executable series lines ran (%.1f%%).**\n\n", r.Executed, r.SeriesLines, r.Percent)
	fmt.Fprintf(w, "Executable: gcov has code for the line in a profiled object (the .c files the series touches, compiled with gcov counters; header lines count where those objects use them).\n\n")
	fmt.Fprintf(w, "## Jobs\n\n| job | verdict | time (%s) | |\n|---|---|---|---|\n", r.Accel)
	for _, j := range r.Jobs {
		fmt.Fprintf(w, "| %s | %s | %.0f s | %s |\n", j.Name, j.Verdict, j.Seconds, mdCell(j.Detail))
	}
	if len(r.Problems) > 0 {
		fmt.Fprintf(w, "\nProblems:\n\n")
		for _, p := range r.Problems {
			fmt.Fprintf(w, "- %s\n", mdCell(p))
		}
	}
	table := func(title string, gs []Group) {
		fmt.Fprintf(w, "\n## %s\n\n| | series lines | executed | %% |\n|---|---:|---:|---:|\n", title)
		for _, g := range gs {
			fmt.Fprintf(w, "| %s | %d | %d | %.1f |\n", mdCell(g.Name), g.SeriesLines, g.Executed, g.Percent)
		}
	}
	table("Per patch", r.PerPatch)
	table("Per file", r.PerFile)
	var partial []Group
	for _, g := range r.PerFunction {
		if g.Executed < g.SeriesLines {
			partial = append(partial, g)
		}
	}
	table(fmt.Sprintf("Functions with unexecuted series lines (%d of %d functions)", len(partial), len(r.PerFunction)), partial)
	if len(r.NotBuilt) > 0 || len(r.NoLineData) > 0 {
		fmt.Fprintf(w, "\n## Not measured\n\n")
		for _, f := range r.NotBuilt {
			fmt.Fprintf(w, "- `%s`: %d changed lines, not compiled in this config\n", f.File, f.Lines)
		}
		for _, f := range r.NoLineData {
			fmt.Fprintf(w, "- `%s`: %d changed lines with no code in any profiled object (declarations; macros, counted where they expand; code under a config this kernel lacks, such as the CONFIG_LDT=n fallbacks; header code only unprofiled objects use)\n", f.File, f.Lines)
		}
	}
	fmt.Fprintf(w, "\n## Unexecuted series lines (%d; %d without a reason)\n\n", len(r.Unexecuted), r.Unexplained)
	fmt.Fprintf(w, "Each with file:line, the patch that last touched it, its text, and why it did not run (docs/coverage.reasons).\n")
	file, fn, why := "", "\x00", "\x00"
	for _, l := range r.Unexecuted {
		if l.File != file {
			file, fn, why = l.File, "\x00", "\x00"
			fmt.Fprintf(w, "\n### %s\n", l.File)
		}
		if l.Function != fn {
			fn, why = l.Function, "\x00"
			fmt.Fprintf(w, "\n%s:\n", orDash(fn))
		}
		if l.Reason != why {
			why = l.Reason
			if why == "" {
				fmt.Fprintf(w, "\n*No reason yet.*\n\n")
			} else {
				fmt.Fprintf(w, "\n*%s*\n\n", mdCell(why))
			}
		}
		fmt.Fprintf(w, "- `%s:%d` (%s) `%s`\n", l.File, l.Line, patchNo(l.Patch), mdCode(l.Text))
	}
	if len(r.StaleReasons) > 0 {
		fmt.Fprintf(w, "\n## Reasons that matched no unexecuted line\n\n")
		for _, s := range r.StaleReasons {
			fmt.Fprintf(w, "- %s\n", mdCell(s))
		}
	}
}

func orDash(s string) string {
	if s == "" {
		return "(outside any function)"
	}
	return "`" + s + "`"
}

// patchNo is a patch's number ("0009-mm-ldt-…" → "0009").
func patchNo(p string) string {
	if i := strings.IndexByte(p, '-'); i > 0 {
		return p[:i]
	}
	return p
}

func mdCell(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}

func mdCode(s string) string {
	s = strings.TrimSpace(strings.ReplaceAll(s, "\t", " "))
	return strings.ReplaceAll(s, "`", "'")
}
