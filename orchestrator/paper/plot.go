package paper

import (
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"ldtlab/guest/bench"
)

// trackerStyle gives every tracker the same colour in every plot.
func trackerStyle(tr string) color.Color {
	for i, t := range bench.Trackers {
		if t == tr {
			return plotutil.Color(i)
		}
	}
	return color.Black
}

func newPlot(title, x, y string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = x
	p.Y.Label.Text = y
	p.Legend.Top = true
	p.Add(plotter.NewGrid())
	return p
}

// line adds a tracker's series with its 95% intervals as error bars.
func line(p *plot.Plot, tr string, xs []float64, ss []Estimate) error {
	pts := make(plotter.XYs, len(xs))
	errs := make(plotter.YErrors, len(xs))
	for i := range xs {
		pts[i] = plotter.XY{X: xs[i], Y: ss[i].Value}
		errs[i] = struct{ Low, High float64 }{ss[i].Value - ss[i].Interval[0], ss[i].Interval[1] - ss[i].Value}
	}
	l, s, err := plotter.NewLinePoints(pts)
	if err != nil {
		return err
	}
	l.Color, s.Color = trackerStyle(tr), trackerStyle(tr)
	eb, err := plotter.NewYErrorBars(struct {
		plotter.XYer
		plotter.YErrorer
	}{pts, errs})
	if err != nil {
		return err
	}
	eb.Color = trackerStyle(tr)
	p.Add(l, s, eb)
	p.Legend.Add(tr, l, s)
	return nil
}

// savePNG draws a grid of plots with a caption of labels underneath.
func savePNG(path string, grid [][]*plot.Plot, caption string, w, h vg.Length) error {
	img := vgimg.New(w, h)
	dc := draw.New(img)
	capH := vg.Points(22)
	body := draw.Crop(dc, 0, 0, capH, 0)
	t := draw.Tiles{Rows: len(grid), Cols: len(grid[0]), PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4, PadTop: vg.Millimeter * 2}
	canv := plot.Align(grid, t, body)
	for i := range grid {
		for j := range grid[i] {
			if grid[i][j] != nil {
				grid[i][j].Draw(canv[i][j])
			}
		}
	}
	fnt := plot.DefaultFont
	fnt.Size = vg.Points(9)
	sty := draw.TextStyle{Color: color.Black, Font: fnt, Handler: plot.DefaultTextHandler, XAlign: draw.XCenter}
	dc.FillText(sty, vg.Point{X: w / 2, Y: vg.Points(7)}, caption)
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Plots writes writeonly.png, timeline.png, redis.png and collect.png.
func Plots(r *Result, dir string) error {
	a := r.Analysis
	if a == nil {
		a = Analyze(r)
	}
	caption := r.Meta.Labels()
	if r.Meta.Accel == "tcg" {
		caption += " · TCG: emulated timings (see README)"
	}
	if wo := r.WriteOnly; wo != nil {
		kinds := WriteKinds(wo, false)
		// A row per THP setting measured (the short plan has THP off only).
		var thps []bool
		for _, thp := range []bool{false, true} {
			if slices.ContainsFunc(wo.Samples, func(s bench.WriteSample) bool { return s.THP == thp }) {
				thps = append(thps, thp)
			}
		}
		grid := make([][]*plot.Plot, len(thps))
		for i, thp := range thps {
			grid[i] = make([]*plot.Plot, len(kinds))
			tk := WriteKinds(wo, thp)
			for j, kind := range kinds {
				if !slices.Contains(tk, kind) {
					e := plot.New()
					e.Title.Text = fmt.Sprintf("(%s: THP off only)", kind.Name())
					e.HideAxes()
					grid[i][j] = e
					continue
				}
				p := newPlot(fmt.Sprintf("Write-only, %s, THP %s", kind.Name(), map[bool]string{false: "off", true: "on"}[thp]),
					"working set (MiB, log scale)", "write + collect, ns per page (median, 95% interval)")
				p.X.Scale = plot.LogScale{}
				p.X.Tick.Marker = plot.LogTicks{}
				for _, tr := range bench.Trackers {
					var xs []float64
					var ss []Estimate
					for _, size := range wo.SizesMiB {
						e := a.Get("writeonly", writeCell(size, thp, kind), tr, "total_ms")
						if !e.Defined() {
							continue
						}
						per := float64(size<<20/4096) / 1e6 // pages, ms → ns
						xs = append(xs, float64(size))
						ss = append(ss, Estimate{Value: e.Value / per, Interval: [2]float64{e.Interval[0] / per, e.Interval[1] / per}, N: e.N})
					}
					if len(xs) > 0 {
						if err := line(p, tr, xs, ss); err != nil {
							return err
						}
					}
				}
				grid[i][j] = p
			}
		}
		if err := savePNG(filepath.Join(dir, "writeonly.png"), grid, caption, vg.Length(len(kinds))*13*vg.Centimeter, vg.Length(len(thps))*10*vg.Centimeter); err != nil {
			return fmt.Errorf("writeonly.png: %w", err)
		}
	}
	if tl := r.Timeline; tl != nil && len(tl.CheckpointsMS) > 0 {
		var grid [][]*plot.Plot
		for _, cp := range tl.CheckpointsMS {
			p := newPlot(fmt.Sprintf("75%% write / 25%% read, %d MiB, from the start of tracking, collect+clear every %g s (median of %d runs per %d ms point)", tl.SizeMiB, float64(cp)/1000, tl.Reps, tl.PointMS),
				"time since tracking started (s)", "operations per second")
			rates, at := TimelineCurve(tl, cp)
			for _, tr := range bench.Trackers {
				rs, ok := rates[tr]
				if !ok {
					continue
				}
				pts := make(plotter.XYs, len(rs))
				for i, v := range rs {
					pts[i] = plotter.XY{X: at[tr][i], Y: v}
				}
				l, err := plotter.NewLine(pts)
				if err != nil {
					return err
				}
				l.Color = trackerStyle(tr)
				l.Width = vg.Points(1.5)
				p.Add(l)
				p.Legend.Add(tr, l)
			}
			p.Y.Min = 0
			grid = append(grid, []*plot.Plot{p})
		}
		if err := savePNG(filepath.Join(dir, "timeline.png"), grid, caption, 24*vg.Centimeter, vg.Length(len(grid))*11*vg.Centimeter); err != nil {
			return fmt.Errorf("timeline.png: %w", err)
		}
	}
	if rd := r.Redis; rd != nil {
		p := newPlot(fmt.Sprintf("Redis throughput under an incremental checkpointer (%.0f s windows, median and 95%% interval of %d)", rd.WindowS, rd.Reps), "", "commands per second")
		var names []string
		var vals plotter.Values
		var errs plotter.YErrors
		var cols []color.Color
		add := func(tr string, iv int) {
			e := a.Get("redis", intervalCell(iv), tr, "ops_s")
			if !e.Defined() {
				return
			}
			n := tr
			if iv > 0 {
				n = fmt.Sprintf("%s %gs", tr, float64(iv)/1000)
			}
			names = append(names, n)
			vals = append(vals, e.Value)
			errs = append(errs, struct{ Low, High float64 }{e.Value - e.Interval[0], e.Interval[1] - e.Value})
			cols = append(cols, trackerStyle(tr))
		}
		add("none", 0)
		for _, iv := range rd.IntervalsMS {
			for _, tr := range bench.Trackers[1:] {
				add(tr, iv)
			}
		}
		for i := range vals {
			// One bar chart per bar, for per-tracker colours.
			v := make(plotter.Values, len(vals))
			v[i] = vals[i]
			b, err := plotter.NewBarChart(v, vg.Points(28))
			if err != nil {
				return err
			}
			b.Color = cols[i]
			b.LineStyle.Width = 0
			p.Add(b)
		}
		if len(vals) > 0 {
			pts := make(plotter.XYs, len(vals))
			for i := range vals {
				pts[i] = plotter.XY{X: float64(i), Y: vals[i]}
			}
			eb, err := plotter.NewYErrorBars(struct {
				plotter.XYer
				plotter.YErrorer
			}{pts, errs})
			if err != nil {
				return err
			}
			p.Add(eb)
			p.NominalX(names...)
		}
		p.Y.Min = 0
		if err := savePNG(filepath.Join(dir, "redis.png"), [][]*plot.Plot{{p}}, caption, 24*vg.Centimeter, 12*vg.Centimeter); err != nil {
			return fmt.Errorf("redis.png: %w", err)
		}
	}
	if c := r.Collect; c != nil {
		p := newPlot(fmt.Sprintf("One collect+clear of %d MiB (%d pages), by dirty share (median, 95%% interval)", c.SizeMiB, c.Pages), "pages dirty (%, log scale)", "time (µs, log scale)")
		p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
		p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{}, plot.LogTicks{}
		for _, tr := range bench.Trackers[1:] {
			var xs []float64
			var ss []Estimate
			for _, pct := range c.Pcts {
				if e := a.Get("collect", collectCell(pct), tr, "us"); e.Defined() {
					xs, ss = append(xs, pct), append(ss, e)
				}
			}
			if len(xs) > 0 {
				if err := line(p, tr, xs, ss); err != nil {
					return err
				}
			}
		}
		if len(c.Pcts) > 0 && c.FloorNS > 0 {
			fl := c.FloorNS / 1e3
			pts := plotter.XYs{{X: c.Pcts[0], Y: fl}, {X: c.Pcts[len(c.Pcts)-1], Y: fl}}
			l, err := plotter.NewLine(pts)
			if err != nil {
				return err
			}
			l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			p.Add(l)
			p.Legend.Add(fmt.Sprintf("floor: page table ÷ %.1f GB/s", c.ReadBandwidth/1e9), l)
		}
		p.Legend.Top, p.Legend.Left = true, true
		if err := savePNG(filepath.Join(dir, "collect.png"), [][]*plot.Plot{{p}}, caption, 24*vg.Centimeter, 14*vg.Centimeter); err != nil {
			return fmt.Errorf("collect.png: %w", err)
		}
	}
	return nil
}
