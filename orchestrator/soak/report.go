package soak

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"html/template"
	"image/color"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"ldtlab/internal/termsafe"
)

// WriteReport writes DIR/report.md (with its figures as PNG files beside
// it) and a self-contained DIR/report.html (figures inline).
func WriteReport(dir string) (mdPath, htmlPath string, err error) {
	recs, err := Replay(dir)
	if err != nil {
		return "", "", err
	}
	s := summarizeDir(dir, recs)
	crashes, err := Crashes(dir)
	if err != nil {
		return "", "", err
	}
	figs, err := figures(s)
	if err != nil {
		return "", "", fmt.Errorf("drawing the report's figures: %w", err)
	}
	for _, f := range figs {
		if err := writeAtomic(filepath.Join(dir, f.file), f.png); err != nil {
			return "", "", err
		}
	}
	r := buildReport(dir, s, crashes)
	mdPath, htmlPath = filepath.Join(dir, "report.md"), filepath.Join(dir, "report.html")
	if err := writeAtomic(mdPath, []byte(r.markdown(figs))); err != nil {
		return "", "", err
	}
	h, err := r.html(figs)
	if err != nil {
		return "", "", err
	}
	if err := writeAtomic(htmlPath, h); err != nil {
		return "", "", err
	}
	return mdPath, htmlPath, nil
}

type figure struct {
	file, caption string
	png           []byte
}

type reportData struct {
	Dir      string
	S        Summary
	Crashes  []Crash
	Head     []string // "key: value" lines
	Env      []string // what the run was: commit, series, QEMU, accelerator, host
	Steps    []string
	Trackers []string
	Tables   []table // per tracker, agitator, fuzz operation, vmstat
}

func buildReport(dir string, s Summary, crashes []Crash) *reportData {
	r := &reportData{Dir: dir, S: s, Crashes: crashes}
	state := "stopped without an end record (killed; resume with `labctl soak --resume " + dir + "`)"
	if lockHeld(dir) {
		state = "still running (partial report)"
	} else if s.Ended != "" {
		state = "finished: " + s.Ended
	}
	if s.First != nil {
		o := s.First.Options
		r.Head = append(r.Head,
			fmt.Sprintf("kernel: %s (%s config), build key %s", s.First.Kernel, o.Config, short(s.First.KernelKey)),
			fmt.Sprintf("accelerator: %s; %d guest(s) of %d MiB, 2 vCPUs each; host %s", s.First.Accel, o.VMs, o.MemoryMiB, s.First.Host),
			fmt.Sprintf("base seed %d; planned length %s; %d session(s)", o.Seed, o.For, s.Sessions))
		if len(o.Inject) > 0 {
			var in []string
			for _, i := range o.Inject {
				in = append(in, fmt.Sprintf("%s@%d", i.Word, i.Round))
			}
			r.Head = append(r.Head, "injected (testing aid): "+strings.Join(in, ", "))
		}
	}
	r.Env = envLines(s.First, s.Last, s.EndLoad)
	r.Tables = []table{trackerTable(s), agitatorTable(s), fuzzOpTable(s), vmstatRoundTable(s), vmstatTotalTable(s), dumpTable(s)}
	if len(s.Coverage) > 0 {
		r.Tables = append(r.Tables, coverageTable(s))
	}
	r.Head = append(r.Head,
		fmt.Sprintf("state: %s", state),
		fmt.Sprintf("from %s to %s, %s active", s.StartedAt.Format(time.RFC3339), s.LastAt.Format(time.RFC3339), s.Elapsed.Round(time.Second)),
		fmt.Sprintf("totals: %s", s.Stats.Line()))
	trs := map[string]bool{}
	for step, row := range s.Table {
		r.Steps = append(r.Steps, step)
		for t := range row {
			trs[t] = true
		}
	}
	sort.Strings(r.Steps)
	for _, t := range append(Trackers, "-") {
		if trs[t] {
			r.Trackers = append(r.Trackers, t)
			delete(trs, t)
		}
	}
	r.Trackers = append(r.Trackers, sortedKeys(trs)...)
	return r
}

func short(k string) string {
	if len(k) > 12 {
		return k[:12]
	}
	return k
}

// cell renders one scenario × tracker entry: verdict counts.
func (r *reportData) cell(step, tr string) string {
	cs := r.S.Table[step][tr]
	if cs == nil {
		return ""
	}
	var parts []string
	for _, v := range sortedKeys(cs.Verdicts) {
		parts = append(parts, fmt.Sprintf("%d %s", cs.Verdicts[v], v))
	}
	return strings.Join(parts, ", ")
}

func (r *reportData) markdown(figs []figure) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Soak report: %s\n\n", mdEsc(r.Dir))
	for _, h := range r.Head {
		fmt.Fprintf(&b, "- %s\n", h)
	}
	if len(r.Env) > 0 {
		b.WriteString("\n## What ran\n\n")
		for _, e := range r.Env {
			fmt.Fprintf(&b, "- %s\n", mdEnv(e))
		}
	}
	fmt.Fprintf(&b, "\n## Crashes (%d unique, %d occurrences%s)\n\n", r.S.CrashUnique, r.S.CrashTotal, r.KnownNote())
	if len(r.Crashes) == 0 {
		b.WriteString("None.\n")
	} else {
		b.WriteString("| title | kind | count | first seen | last seen | reproduced | reproduction | dir |\n|---|---|---|---|---|---|---|---|\n")
		for _, c := range r.Crashes {
			fmt.Fprintf(&b, "| %s | %s | %d | %s | %s | %s | %s | crashes/%s |\n", mdEsc(c.Title), mdEsc(c.Kind), c.Count,
				c.FirstSeen.Format("01-02 15:04:05"), c.LastSeen.Format("01-02 15:04:05"), mdEsc(reproduced(c)), mdCode(c.Repro, true), mdEsc(filepath.Base(c.Dir)))
		}
	}
	fmt.Fprintf(&b, "\n## Scenario × tracker (verdict counts over finished rounds)\n\n")
	var trs []string
	for _, t := range r.Trackers {
		trs = append(trs, mdEsc(t))
	}
	b.WriteString("| step | " + strings.Join(trs, " | ") + " |\n|---|" + strings.Repeat("---|", len(r.Trackers)) + "\n")
	for _, st := range r.Steps {
		row := []string{mdEsc(st)}
		for _, t := range r.Trackers {
			row = append(row, mdEsc(r.cell(st, t)))
		}
		b.WriteString("| " + strings.Join(row, " | ") + " |\n")
	}
	for _, t := range r.Tables {
		b.WriteString(t.markdown())
	}
	fmt.Fprintf(&b, "\n## Failures (%d)\n\n", len(r.S.Failed))
	for i, c := range r.S.Failed {
		if i == 50 {
			fmt.Fprintf(&b, "- … %d more in journal.jsonl\n", len(r.S.Failed)-50)
			break
		}
		dump := ""
		if c.Dump != "" {
			dump = " (console and sysrq-t/w dump: " + mdCode(c.Dump, false) + ")"
		}
		fmt.Fprintf(&b, "- round %d, %s: %s %s — %s%s\n", c.Round, mdEsc(c.Step.String()), mdEsc(c.Verdict), mdEsc(firstLine(c.Reason+" "+c.Error)), mdCode(c.Repro, false), dump)
	}
	fmt.Fprintf(&b, "\n## Lab failures (%d; not kernel bugs: DIR/lab-failures/)\n\n", len(r.S.LabFail))
	for _, l := range r.S.LabFail {
		fmt.Fprintf(&b, "- round %d worker %d (%s): %s\n", l.Round, l.Worker, mdEsc(l.Phase), mdEsc(firstLine(l.Error)))
	}
	b.WriteString("\n## Figures\n\n")
	for _, f := range figs {
		fmt.Fprintf(&b, "![%s](%s)\n\n%s\n\n", f.caption, f.file, f.caption)
	}
	return b.String()
}

// markdown renders t; every cell is escaped (names come from the guest).
func (t table) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n## %s\n\n", mdEsc(t.Title))
	if t.Note != "" {
		fmt.Fprintf(&b, "%s\n\n", mdEsc(t.Note))
	}
	if len(t.Rows) == 0 {
		fmt.Fprintf(&b, "%s\n", mdEsc(t.Empty))
		return b.String()
	}
	var head []string
	for _, h := range t.Head {
		head = append(head, mdEsc(h))
	}
	b.WriteString("| " + strings.Join(head, " | ") + " |\n|" + strings.Repeat("---|", len(t.Head)) + "\n")
	for _, row := range t.Rows {
		var cells []string
		for _, c := range row {
			cells = append(cells, mdEsc(c))
		}
		b.WriteString("| " + strings.Join(cells, " | ") + " |\n")
	}
	return b.String()
}

// mdEnv escapes an environment line but keeps its code spans (commit,
// hashes) as code.
func mdEnv(s string) string {
	parts := strings.Split(s, "`")
	for i := range parts {
		if i%2 == 1 {
			parts[i] = mdCode(parts[i], false)
		} else {
			parts[i] = mdEsc(parts[i])
		}
	}
	return strings.Join(parts, "")
}

// knownNote counts the filed known kernel bugs outside LDT, which the
// crash totals leave out.
func (r *reportData) KnownNote() string {
	n, occ := 0, 0
	for _, c := range r.Crashes {
		if c.Kind == "known" {
			n++
			occ += c.Count
		}
	}
	if n == 0 {
		return ""
	}
	return fmt.Sprintf("; plus %d known kernel bug(s) outside LDT seen %d time(s), listed with kind known, not counted", n, occ)
}

func reproduced(c Crash) string {
	if c.Kind != "correctness" {
		return "–"
	}
	var p []string
	for _, k := range sortedKeys(c.Reproduced) {
		p = append(p, fmt.Sprintf("%s %d", k, c.Reproduced[k]))
	}
	return strings.Join(p, ", ")
}

// mdEsc renders text (much of it from the guest: titles, scenario
// names, errors) as literal Markdown text that also fits in a table
// cell: no raw HTML, no emphasis, links or code spans, no line break,
// control characters escaped.
func mdEsc(s string) string {
	var b strings.Builder
	for _, r := range termsafe.Line(s) {
		switch r {
		case '&':
			b.WriteString("&amp;")
		case '<':
			b.WriteString("&lt;")
		case '>':
			b.WriteString("&gt;")
		case '\\', '`', '*', '_', '[', ']', '|', '#', '~':
			b.WriteRune('\\')
			b.WriteRune(r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// mdCode renders s as one code span: its fence is longer than any run
// of backticks inside, so nothing breaks out of it (in a table, | is
// escaped as GFM wants even inside code).
func mdCode(s string, inTable bool) string {
	s = termsafe.Line(s)
	run, longest := 0, 0
	for _, r := range s {
		if r == '`' {
			run++
			longest = max(longest, run)
		} else {
			run = 0
		}
	}
	if inTable {
		s = strings.ReplaceAll(s, "|", `\|`)
	}
	fence := strings.Repeat("`", longest+1)
	if longest > 0 || s == "" {
		return fence + " " + s + " " + fence
	}
	return fence + s + fence
}

var htmlTmpl = template.Must(template.New("r").Funcs(template.FuncMap{
	"cell":  func(r *reportData, s, t string) string { return r.cell(s, t) },
	"ts":    func(t time.Time) string { return t.Format("01-02 15:04:05") },
	"repr":  reproduced,
	"base":  filepath.Base,
	"first": firstLine,
	// envhtml: an environment line with its `code` spans as <code>, the
	// rest escaped.
	"envhtml": func(s string) template.HTML {
		parts := strings.Split(s, "`")
		for i := range parts {
			parts[i] = template.HTMLEscapeString(parts[i])
			if i%2 == 1 {
				parts[i] = "<code>" + parts[i] + "</code>"
			}
		}
		return template.HTML(strings.Join(parts, ""))
	},
	"bad": func(c string) bool {
		return strings.Contains(c, "FAIL") || strings.Contains(c, "SKIP") || strings.Contains(c, "NO-TEETH") || strings.Contains(c, "ERROR")
	},
}).Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>ldtlab soak report</title>
<style>
body{font-family:sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;font-size:13px;text-align:left;vertical-align:top}
th{background:#eee}td.bad{background:#fdd}code{font-size:12px}img{max-width:100%;border:1px solid #ddd}
</style></head><body>
<h1>ldtlab soak report</h1>
<p><code>{{.R.Dir}}</code></p>
<ul>{{range .R.Head}}<li>{{.}}</li>{{end}}</ul>
{{if .R.Env}}<h2>What ran</h2><ul>{{range .R.Env}}<li>{{envhtml .}}</li>{{end}}</ul>{{end}}
<h2>Crashes ({{.R.S.CrashUnique}} unique, {{.R.S.CrashTotal}} occurrences{{.R.KnownNote}})</h2>
{{if .R.Crashes}}<table><tr><th>title</th><th>kind</th><th>count</th><th>first seen</th><th>last seen</th><th>reproduced</th><th>reproduction</th><th>directory</th></tr>
{{range .R.Crashes}}<tr><td>{{.Title}}</td><td>{{.Kind}}</td><td>{{.Count}}</td><td>{{ts .FirstSeen}}</td><td>{{ts .LastSeen}}</td><td>{{repr .}}</td><td><code>{{.Repro}}</code></td><td><code>crashes/{{base .Dir}}</code></td></tr>
{{end}}</table>{{else}}<p>None.</p>{{end}}
<h2>Scenario × tracker</h2><p>Verdict counts over finished rounds (as <code>labctl check</code> judges).</p>
<table><tr><th>step</th>{{range .R.Trackers}}<th>{{.}}</th>{{end}}</tr>
{{range $s := .R.Steps}}<tr><td>{{$s}}</td>{{range $t := $.R.Trackers}}{{$c := cell $.R $s $t}}<td{{if bad $c}} class="bad"{{end}}>{{$c}}</td>{{end}}</tr>
{{end}}</table>
{{range .R.Tables}}<h2>{{.Title}}</h2>{{if .Note}}<p>{{.Note}}</p>{{end}}
{{if .Rows}}<table><tr>{{range .Head}}<th>{{.}}</th>{{end}}</tr>
{{range .Rows}}<tr>{{range .}}<td>{{.}}</td>{{end}}</tr>
{{end}}</table>{{else}}<p>{{.Empty}}</p>{{end}}
{{end}}
<h2>Failures ({{len .R.S.Failed}})</h2><ul>
{{range $i, $c := .R.S.Failed}}{{if lt $i 50}}<li>round {{$c.Round}}, {{$c.Step}}: <b>{{$c.Verdict}}</b> {{first (print $c.Reason " " $c.Error)}}<br><code>{{$c.Repro}}</code>{{if $c.Dump}}<br>console and sysrq-t/w dump: <code>{{$c.Dump}}</code>{{end}}</li>{{end}}{{end}}</ul>
<h2>Lab failures ({{len .R.S.LabFail}})</h2><p>Failures of QEMU, the channel or the host disk: kept in <code>lab-failures/</code>, never counted as kernel bugs.</p><ul>
{{range .R.S.LabFail}}<li>round {{.Round}} worker {{.Worker}} ({{.Phase}}): {{first .Error}}</li>{{end}}</ul>
<h2>Figures</h2>
{{range .Figs}}<figure><img alt="{{.Caption}}" src="data:image/png;base64,{{.B64}}"><figcaption>{{.Caption}}</figcaption></figure>
{{end}}
</body></html>
`))

func (r *reportData) html(figs []figure) ([]byte, error) {
	type fig struct{ Caption, B64 string }
	var fs []fig
	for _, f := range figs {
		fs = append(fs, fig{f.caption, base64.StdEncoding.EncodeToString(f.png)})
	}
	var b bytes.Buffer
	err := htmlTmpl.Execute(&b, map[string]any{"R": r, "Figs": fs})
	return b.Bytes(), err
}

// figures draws rounds and pages verified over active time, and failures
// and crash occurrences over active time.
func figures(s Summary) ([]figure, error) {
	caption := "active time of the soak"
	if s.First != nil {
		caption = fmt.Sprintf("kernel %s (%s), accelerator %s, %d guest(s)", s.First.Kernel, s.First.Options.Config, s.First.Accel, s.First.Options.VMs)
	}
	xs := func(f func(Point) float64) plotter.XYs {
		pts := plotter.XYs{{X: 0, Y: 0}}
		for _, p := range s.Timeline {
			pts = append(pts, plotter.XY{X: p.Elapsed.Minutes(), Y: f(p)})
		}
		return pts
	}
	progress := [][]*plot.Plot{{
		linePlot("Rounds finished", "rounds", []series{{"rounds", xs(func(p Point) float64 { return float64(p.Rounds) }), 0}}),
		linePlot("Pages verified against ground truth", "pages (millions)", []series{{"pages", xs(func(p Point) float64 { return float64(p.Pages) / 1e6 }), 1}}),
	}}
	fails := [][]*plot.Plot{{
		linePlot("Failures and crashes", "count (cumulative)", []series{
			{"failed cells", xs(func(p Point) float64 { return float64(p.Failures) }), 2},
			{"crash occurrences", xs(func(p Point) float64 { return float64(p.Crashes) }), 3},
		}),
	}}
	var out []figure
	for _, f := range []struct {
		file, title string
		grid        [][]*plot.Plot
		w           vg.Length
	}{
		{"report-progress.png", "Rounds and pages verified over the soak's active time", progress, 24 * vg.Centimeter},
		{"report-failures.png", "Failed cells and crash occurrences over the soak's active time", fails, 16 * vg.Centimeter},
	} {
		png, err := renderPNG(f.grid, caption, f.w, 9*vg.Centimeter)
		if err != nil {
			return nil, err
		}
		out = append(out, figure{file: f.file, caption: f.title + " (" + caption + ")", png: png})
	}
	if len(s.Coverage) > 0 {
		png, err := renderPNG([][]*plot.Plot{{coveragePlot(s.Coverage)}}, caption, 16*vg.Centimeter, 9*vg.Centimeter)
		if err != nil {
			return nil, err
		}
		out = append(out, figure{file: "report-coverage.png", caption: "Executed series lines over the soak's active time (" + caption + ")", png: png})
	}
	return out, nil
}

// coveragePlot is the coverage curve as syzkaller's dashboard draws it:
// the union of executed series lines against hours of soak, under a
// dashed line at the series' executable lines.
func coveragePlot(pts []CoveragePoint) *plot.Plot {
	pts = sortedCoverage(pts)
	total := 0
	xy := plotter.XYs{{X: 0, Y: 0}}
	for _, p := range pts {
		xy = append(xy, plotter.XY{X: p.Elapsed / 3600, Y: float64(p.Executed)})
		total = max(total, p.SeriesLines)
	}
	end := xy[len(xy)-1].X
	if end == 0 {
		end = 1.0 / 60
	}
	p := plot.New()
	p.Title.Text = "Executed series lines over time"
	p.X.Label.Text = "soak (hours, active)"
	p.Y.Label.Text = "series lines executed (union)"
	p.X.Min, p.Y.Min = 0, 0
	p.Y.Max = float64(max(total, 1)) * 1.3 // room for the legend above the total
	p.Legend.Top, p.Legend.Left = true, true
	p.Add(plotter.NewGrid())
	if l, err := plotter.NewLine(xy); err == nil {
		l.Color = plotutil.Color(0)
		l.Width = vg.Points(1.5)
		// The union holds until the next snapshot.
		l.StepStyle = plotter.PostStep
		p.Add(l)
		p.Legend.Add("executed", l)
	}
	if l, err := plotter.NewLine(plotter.XYs{{X: 0, Y: float64(total)}, {X: end, Y: float64(total)}}); err == nil {
		l.Color = plotutil.Color(2)
		l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("series lines (%d)", total), l)
	}
	return p
}

// sortedCoverage orders points by active time (two workers' snapshots
// can reach the journal in the other order).
func sortedCoverage(pts []CoveragePoint) []CoveragePoint {
	out := append([]CoveragePoint(nil), pts...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Elapsed < out[j].Elapsed })
	return out
}

// coverageTable is the curve's final numbers: the union at the last
// snapshot, per patch.
func coverageTable(s Summary) table {
	pts := sortedCoverage(s.Coverage)
	last := pts[len(pts)-1]
	t := table{
		Title: "Coverage of the series' lines",
		Note: fmt.Sprintf("%d of %d executable series lines executed (%.1f%%) after %s of soak: the union over %d snapshot(s) of the guests' gcov counters, across guests and reboots (kept in %s).",
			last.Executed, last.SeriesLines, last.Percent(), (time.Duration(last.Elapsed) * time.Second).Round(time.Minute), len(pts), CoverageUnionName),
		Head:  []string{"patch", "series lines", "executed", "%"},
		Empty: "No per-patch counts.",
	}
	for _, g := range last.PerPatch {
		t.Rows = append(t.Rows, []string{g.Name, fmt.Sprint(g.SeriesLines), fmt.Sprint(g.Executed), fmt.Sprintf("%.1f", g.Percent)})
	}
	return t
}

type series struct {
	name  string
	pts   plotter.XYs
	color int
}

func linePlot(title, y string, ss []series) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "active time (minutes)"
	p.Y.Label.Text = y
	p.Y.Min = 0
	p.Legend.Top, p.Legend.Left = true, true
	p.Add(plotter.NewGrid())
	top := 0.0
	for _, s := range ss {
		for _, pt := range s.pts {
			top = max(top, pt.Y)
		}
	}
	if top == 0 {
		top = 1
	}
	p.Y.Max = top * 1.2 // room for the legend
	for _, s := range ss {
		l, err := plotter.NewLine(s.pts)
		if err != nil {
			continue
		}
		l.Color = plotutil.Color(s.color)
		l.Width = vg.Points(1.5)
		// Cumulative counts: each value holds until the next round ends.
		l.StepStyle = plotter.PostStep
		p.Add(l)
		if len(ss) > 1 {
			p.Legend.Add(s.name, l)
		}
	}
	return p
}

func renderPNG(grid [][]*plot.Plot, caption string, w, h vg.Length) ([]byte, error) {
	img := vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(110))
	dc := draw.New(img)
	capH := vg.Points(18)
	body := draw.Crop(dc, 0, 0, capH, 0)
	t := draw.Tiles{Rows: len(grid), Cols: len(grid[0]), PadX: vg.Millimeter * 6, PadY: vg.Millimeter * 4, PadTop: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 4}
	canv := plot.Align(grid, t, body)
	for i := range grid {
		for j := range grid[i] {
			grid[i][j].Draw(canv[i][j])
		}
	}
	fnt := plot.DefaultFont
	fnt.Size = vg.Points(8)
	sty := draw.TextStyle{Color: color.Gray{Y: 80}, Font: fnt, Handler: plot.DefaultTextHandler, XAlign: draw.XCenter}
	dc.FillText(sty, vg.Point{X: w / 2, Y: vg.Points(5)}, caption)
	var b bytes.Buffer
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(&b); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
