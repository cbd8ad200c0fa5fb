package report

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"

	"github.com/taskselector/taskselector/sim"
)

// Plot file names (each written as .png and .svg).
const (
	PlotGoodputEarly = "goodput-early-game"
	PlotGoodputFleet = "goodput-fleet"
	PlotFailedEarly  = "failed-launches-early-game"
	PlotFailedFleet  = "failed-launches-fleet"
)

// pngDPI is the resolution of the PNG files (tests lower it to save time).
var pngDPI = 110

// Where a zero is drawn on a logarithmic axis: failed launches per hour,
// and income per second.
const (
	zeroOnLog   = 0.1
	incomeFloor = 1
)

var policyStyle = map[string]struct {
	c    color.Color
	dash []vg.Length
}{
	sim.PolicySelector: {color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}, nil},
	sim.PolicyNaive:    {color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}, nil},
	sim.PolicyBound:    {color.RGBA{R: 0x55, G: 0x55, B: 0x55, A: 0xff}, []vg.Length{vg.Points(4), vg.Points(3)}},
}

// series is one policy's line: x is the RAM level, y the measure.
func series(res *Results, wl, policy string, y func(*Record) (float64, bool), x func(*Record) float64) plotter.XYs {
	var xys plotter.XYs
	for i := range res.Runs {
		r := &res.Runs[i]
		if r.Workload != wl || r.Policy != policy {
			continue
		}
		if v, ok := y(r); ok {
			xys = append(xys, plotter.XY{X: x(r), Y: v})
		}
	}
	return xys
}

func addLine(p *plot.Plot, name string, xys plotter.XYs) error {
	if len(xys) == 0 {
		return nil
	}
	l, pts, err := plotter.NewLinePoints(xys)
	if err != nil {
		return fmt.Errorf("report: %s: %w", name, err)
	}
	st := policyStyle[name]
	l.Color, pts.Color = st.c, st.c
	l.Dashes = st.dash
	l.Width = vg.Points(1.5)
	pts.Shape = plotutil.Shape(policyOrder(name))
	p.Add(l, pts)
	p.Legend.Add(name, l, pts)
	return nil
}

func ramX(r *Record) float64 { return r.RAMGiB }
func pctX(r *Record) float64 {
	if r.RAMPct != nil {
		return *r.RAMPct
	}
	return 0
}

// writePlots draws every plot of res into dir and returns the base names.
func writePlots(dir string, res *Results) ([]string, error) {
	var names []string
	type spec struct {
		name, wl, title, ylabel, xlabel string
		policies                        []string
		y                               func(*Record) (float64, bool)
		x                               func(*Record) float64
		logX, logY                      bool
		floor                           float64
	}
	phases := func(r *Record) (float64, bool) {
		if r.PhasesPerH == nil {
			return 0, false
		}
		return *r.PhasesPerH, true
	}
	incomeLog := func(r *Record) (float64, bool) {
		if r.IncomePerS == nil {
			return 0, false
		}
		return math.Max(*r.IncomePerS, incomeFloor), true
	}
	failed := func(r *Record) (float64, bool) {
		if r.FailedLaunchesPerH == nil {
			return 0, false
		}
		return math.Max(*r.FailedLaunchesPerH, zeroOnLog), true
	}
	all := []string{sim.PolicySelector, sim.PolicyNaive, sim.PolicyBound}
	two := all[:2]
	specs := []spec{
		{PlotGoodputEarly, sim.WorkloadEarlyGame, "early-game: income against RAM (0 drawn at 1)", "income per second ($/s, log)", "total RAM (GiB, log scale)", all, incomeLog, ramX, true, true, incomeFloor},
		{PlotGoodputFleet, sim.WorkloadFleet, "fleet: phases completed against RAM", "phases per hour", "RAM (% of full-size demand)", all, phases, pctX, false, false, 0},
		{PlotFailedEarly, sim.WorkloadEarlyGame, "early-game: failed launches (0 drawn at 0.1)", "failed launches per hour (log)", "total RAM (GiB, log scale)", two, failed, ramX, true, true, zeroOnLog},
		{PlotFailedFleet, sim.WorkloadFleet, "fleet: failed launches (0 drawn at 0.1)", "failed launches per hour (log)", "RAM (% of full-size demand)", two, failed, pctX, false, true, zeroOnLog},
	}
	for _, s := range specs {
		p := plot.New()
		p.Title.Text = s.title
		p.X.Label.Text = s.xlabel
		p.Y.Label.Text = s.ylabel
		p.Legend.Top = true
		p.Legend.Left = true
		p.Add(plotter.NewGrid())
		if s.logX {
			p.X.Scale = plot.LogScale{}
			p.X.Tick.Marker = powTwoTicks{}
		}
		if s.logY {
			p.Y.Scale = plot.LogScale{}
			p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
		}
		p.Y.Min = 0
		for _, pol := range s.policies {
			if err := addLine(p, pol, series(res, s.wl, pol, s.y, s.x)); err != nil {
				return nil, err
			}
		}
		if s.logY {
			p.Y.Min = s.floor
			p.Y.Max *= 30 // room for the legend above the lines
		} else {
			p.Y.Max *= 1.3
		}
		if err := save(dir, s.name, 16*vg.Centimeter, 10*vg.Centimeter, func(c draw.Canvas) { p.Draw(c) }); err != nil {
			return nil, err
		}
		names = append(names, s.name)
	}
	for _, tl := range res.Timelines {
		name := TimelineName(tl)
		if err := timelinePlot(dir, name, tl); err != nil {
			return nil, err
		}
		names = append(names, name)
	}
	return names, nil
}

// TimelineName is the base file name of a timeline plot.
func TimelineName(tl Timeline) string {
	lvl := strings.NewReplacer(" ", "", "%", "pct").Replace(tl.Level)
	return fmt.Sprintf("timeline-%s-%s-%s", tl.Workload, lvl, tl.Policy)
}

// powTwoTicks labels a log axis of GiB at powers of two.
type powTwoTicks struct{}

// Ticks implements plot.Ticker.
func (powTwoTicks) Ticks(lo, hi float64) []plot.Tick {
	var ts []plot.Tick
	for v := 1.0; v <= hi*1.0001; v *= 2 {
		if v >= lo*0.9999 {
			ts = append(ts, plot.Tick{Value: v, Label: fmt.Sprintf("%g", v)})
		}
	}
	return ts
}

// timelinePlot draws one run: RAM use stacked on top, task states below.
func timelinePlot(dir, name string, tl Timeline) error {
	n := len(tl.Samples)
	if n == 0 {
		return nil
	}
	xs := make(plotter.Values, n)
	helpers := make(plotter.Values, n)
	wrappers := make(plotter.Values, n)
	total := make(plotter.Values, n)
	for i, s := range tl.Samples {
		xs[i] = s.At.Minutes()
		helpers[i] = float64(s.HelpersMiB) / 1024
		wrappers[i] = helpers[i] + float64(s.WrapperMiB)/1024
		total[i] = wrappers[i] + float64(s.FreeMiB)/1024
	}
	top := plot.New()
	top.Title.Text = fmt.Sprintf("%s at %s, policy %s: RAM", tl.Workload, tl.Level, tl.Policy)
	top.Y.Label.Text = "GiB"
	top.Legend.Top = true
	top.Legend.Left = true
	if err := plotutil.AddStackedAreaPlots(top, xs, "free", total, "wrappers", wrappers, "helpers", helpers); err != nil {
		return fmt.Errorf("report: timeline %s: %w", name, err)
	}
	top.Y.Min = 0

	top.Y.Max *= 1.35

	mid := plot.New()
	mid.Title.Text = "tasks and targets"
	mid.Y.Label.Text = "count"
	mid.Legend.Top = true
	mid.Legend.Left = true
	mid.Add(plotter.NewGrid())
	types := map[string]bool{}
	for _, s := range tl.Samples {
		for k := range s.Running {
			types[k] = true
		}
	}
	order := []string{"till", "sow", "harvest", "prep", "serve"}
	var args []any
	for _, k := range order {
		if types[k] {
			args = append(args, "running "+k, countSeries(tl.Samples, func(s sim.Sample) float64 { return float64(s.Running[k]) }))
		}
	}
	args = append(args,
		"started, no helpers yet", countSeries(tl.Samples, func(s sim.Sample) float64 { return float64(s.Starting) }),
		"targets with no task", countSeries(tl.Samples, func(s sim.Sample) float64 { return float64(s.Idle) }))
	if err := plotutil.AddLines(mid, args...); err != nil {
		return fmt.Errorf("report: timeline %s: %w", name, err)
	}
	mid.Y.Min = 0
	mid.Y.Max *= 1.6

	bottom := plot.New()
	bottom.Title.Text = "failed launches"
	bottom.X.Label.Text = "virtual time (minutes)"
	bottom.Y.Label.Text = "per minute"
	bottom.Add(plotter.NewGrid())
	var perMin plotter.XYs
	for i, s := range tl.Samples {
		if i == 0 {
			continue
		}
		dt := (s.At - tl.Samples[i-1].At).Minutes()
		perMin = append(perMin, plotter.XY{X: s.At.Minutes(), Y: float64(s.Failures) / dt})
	}
	if len(perMin) > 0 {
		l, err := plotter.NewLine(perMin)
		if err != nil {
			return fmt.Errorf("report: timeline %s: %w", name, err)
		}
		l.Color = policyStyle[sim.PolicyNaive].c
		bottom.Add(l)
	}
	bottom.Y.Min = 0
	bottom.Y.Max = math.Max(bottom.Y.Max*1.15, 1)
	end := tl.Samples[n-1].At.Minutes()
	for _, p := range []*plot.Plot{top, mid, bottom} {
		p.X.Min, p.X.Max = 0, end
	}
	return save(dir, name, 18*vg.Centimeter, 22*vg.Centimeter, func(c draw.Canvas) {
		tiles := draw.Tiles{Rows: 3, Cols: 1, PadX: vg.Millimeter, PadY: 3 * vg.Millimeter,
			PadTop: 2 * vg.Millimeter, PadBottom: 2 * vg.Millimeter, PadLeft: 2 * vg.Millimeter, PadRight: 2 * vg.Millimeter}
		cs := plot.Align([][]*plot.Plot{{top}, {mid}, {bottom}}, tiles, c)
		top.Draw(cs[0][0])
		mid.Draw(cs[1][0])
		bottom.Draw(cs[2][0])
	})
}

func countSeries(ss []sim.Sample, f func(sim.Sample) float64) plotter.XYs {
	xys := make(plotter.XYs, len(ss))
	for i, s := range ss {
		xys[i] = plotter.XY{X: s.At.Minutes(), Y: f(s)}
	}
	return xys
}

// save draws into a PNG and an SVG file of the same base name.
func save(dir, base string, w, h vg.Length, draw1 func(draw.Canvas)) error {
	png := vgimg.PngCanvas{Canvas: vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(pngDPI), vgimg.UseBackgroundColor(color.White))}
	draw1(draw.New(png))
	svg := vgsvg.New(w, h)
	draw1(draw.New(svg))
	if err := writeTo(filepath.Join(dir, base+".png"), png); err != nil {
		return err
	}
	return writeTo(filepath.Join(dir, base+".svg"), svg)
}

func writeTo(path string, wt io.WriterTo) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	if _, err := wt.WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("report: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("report: close %s: %w", path, err)
	}
	return nil
}
