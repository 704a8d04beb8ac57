package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/gantry-ml/gantry/kernels"
	"github.com/gantry-ml/gantry/pkg/checkpoint"
	"github.com/gantry-ml/gantry/pkg/grid"
	"github.com/gantry-ml/gantry/pkg/spec"
	"github.com/gantry-ml/gantry/pkg/store"
	"github.com/gantry-ml/gantry/pkg/train"
	"github.com/gantry-ml/gantry/pkg/trainloop"
)

// maxSeeds bounds one seed list, so that a typo such as 0-1000000000 fails at once.
const maxSeeds = 100000

// genFlags are the flags of `worker generate`.
type genFlags struct {
	checkpoint string
	seeds      string
	psi        float64
	cutoff     int
	noise      string
	cols, pad  int
	lod        float64
	useG       bool
	out        string
	outDir     string

	mixingOut        string
	mixRows, mixCols string
	crossover        int

	interpOut string
	from, to  uint64
	steps     int

	threads  int
	logLevel string
	s3       store.Config
}

// newGenerateCmd returns `worker generate`: images from a checkpoint.
func newGenerateCmd() *cobra.Command {
	var f genFlags
	cmd := &cobra.Command{
		Use:   "generate --checkpoint URI [--seeds 0-15] [--psi 0.7] --out grid.png",
		Short: "Render images from a checkpoint: a seed grid, a style-mixing figure, an interpolation strip",
		Long: `Renders images with Gs (the moving-average generator; --use-g for G) of a checkpoint.
--checkpoint is a checkpoint directory (.../checkpoints/ckpt-NNNNNNNNNNNN) or a run's output
root (what worker train --out was), whose latest committed checkpoint is used; a directory,
file:///dir or s3://bucket/prefix. A seed always renders the same image: z is drawn from the
seed alone and every image is rendered in its own pass.

Outputs (give at least one):
  --out grid.png        one image per --seeds, in a grid of --cols columns
  --out-dir DIR         one PNG per --seeds: DIR/seedNNNN.png
  --mixing-out fig.png  SG's style-mixing figure: the first row holds the --mix-cols
                        sources, the first column the --mix-rows sources; image (i, j) takes
                        the styles of layers [0, --crossover) (coarse) and the noise from row
                        seed i and the rest (fine) from column seed j
  --interp-out strip.png  --steps images from --from to --to, interpolating linearly in w
                        (noise, in mode random, blended to stay standard normal)

Seed lists: "0-15", "1,5,9", "0-3,10". Images render at --lod (default: the level the
checkpoint was training at) and are enlarged to the dataset resolution.`,
		Args: cobra.NoArgs,
	}
	fl := cmd.Flags()
	fl.StringVar(&f.checkpoint, "checkpoint", "", "checkpoint directory, or a run's output root (its latest checkpoint): a path, file:///dir or s3://bucket/prefix")
	fl.StringVar(&f.seeds, "seeds", "0-15", "seeds for --out and --out-dir: \"0-15\", \"1,5,9\", \"0-3,10\"")
	fl.Float64Var(&f.psi, "psi", 0.7, "truncation psi (1: none; default: the job spec's model.truncation_psi)")
	fl.IntVar(&f.cutoff, "truncation-cutoff", 8, "number of style layers truncated (default: the job spec's model.truncation_cutoff)")
	fl.StringVar(&f.noise, "noise", "random", "noise inputs: random (drawn from each image's seed), const (the same for every image) or none")
	fl.IntVar(&f.cols, "cols", 0, "columns of the --out grid (default: about the square root of the seed count)")
	fl.IntVar(&f.pad, "pad", 1, "pixels between images")
	fl.Float64Var(&f.lod, "lod", 0, "level of detail to render at, 0 = full resolution (default: the checkpoint's)")
	fl.BoolVar(&f.useG, "use-g", false, "render with G instead of Gs (the moving average)")
	fl.StringVar(&f.out, "out", "", "grid PNG of the --seeds images")
	fl.StringVar(&f.outDir, "out-dir", "", "directory for one PNG per seed (seedNNNN.png)")
	fl.StringVar(&f.mixingOut, "mixing-out", "", "style-mixing figure PNG")
	fl.StringVar(&f.mixRows, "mix-rows", "0-4", "seeds of the mixing figure's rows (coarse styles and noise)")
	fl.StringVar(&f.mixCols, "mix-cols", "5-10", "seeds of the mixing figure's columns (fine styles)")
	fl.IntVar(&f.crossover, "crossover", 0, "first style layer taken from the column seed (default: 4, or half the layers when fewer than 8)")
	fl.StringVar(&f.interpOut, "interp-out", "", "latent interpolation strip PNG")
	fl.Uint64Var(&f.from, "from", 0, "interpolation start seed")
	fl.Uint64Var(&f.to, "to", 1, "interpolation end seed")
	fl.IntVar(&f.steps, "steps", 8, "images in the interpolation strip, both ends included")
	fl.IntVar(&f.threads, "threads", 0, "CPU threads for the kernels (0: all cores)")
	fl.StringVar(&f.logLevel, "log-level", "info", "log level: trace, debug, info, warn, error")
	f.s3.BindFlags(fl)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		lg := newLogger("worker", f.logLevel, false)
		f.s3.Logger = lg.Named("store")
		ch := cmd.Flags().Changed
		return runGenerate(ctx, lg, f, ch("psi"), ch("truncation-cutoff"), ch("lod"), ch("crossover"))
	}
	return cmd
}

// parseSeeds parses a seed list: comma-separated numbers and inclusive ranges A-B.
func parseSeeds(flag, s string) ([]uint64, error) {
	var out []uint64
	for _, tok := range strings.Split(s, ",") {
		tok = strings.TrimSpace(tok)
		bad := func(why string) error {
			return fmt.Errorf("generate: --%s %q: bad seed %q: %s", flag, s, tok, why)
		}
		if tok == "" {
			return nil, bad("empty; want N or A-B")
		}
		lo, hi, isRange := strings.Cut(tok, "-")
		a, err := strconv.ParseUint(strings.TrimSpace(lo), 10, 64)
		if err != nil {
			return nil, bad("want N or A-B with non-negative integers")
		}
		b := a
		if isRange {
			if b, err = strconv.ParseUint(strings.TrimSpace(hi), 10, 64); err != nil {
				return nil, bad("want N or A-B with non-negative integers")
			}
			if b < a {
				return nil, bad("range runs backwards")
			}
		}
		if b-a >= maxSeeds || len(out)+int(b-a+1) > maxSeeds {
			return nil, bad(fmt.Sprintf("more than %d seeds", maxSeeds))
		}
		for v := a; ; v++ {
			out = append(out, v)
			if v == b {
				break
			}
		}
	}
	return out, nil
}

var ckptDirRE = regexp.MustCompile(`^ckpt-[0-9]{12,}$`)

// openCheckpoint finds and loads the checkpoint uri names: a checkpoint directory (or its
// manifest.json), or a root holding checkpoints/ckpt-*/ (or ckpt-*/), whose latest committed
// checkpoint it takes. A checkpoint directory is opened from its parent, so that errors name it.
func openCheckpoint(ctx context.Context, uri string, cfg store.Config) (*checkpoint.Checkpoint, error) {
	if uri == "" {
		return nil, fmt.Errorf("generate: --checkpoint is required (a checkpoint directory or a run's output root)")
	}
	uri = strings.TrimRight(uri, "/")
	if !strings.HasPrefix(uri, "s3://") {
		// store.Open creates a missing directory; a checkpoint that is not there is an error.
		p := strings.TrimPrefix(uri, "file://")
		if p == "" {
			p = "/"
		}
		fi, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("generate: checkpoint %s: no such directory", uri)
		}
		if !fi.IsDir() {
			if filepath.Base(p) != checkpoint.ManifestKey {
				return nil, fmt.Errorf("generate: checkpoint %s: not a directory", uri)
			}
			p = filepath.Dir(p)
		}
		if abs, err := filepath.Abs(p); err == nil {
			p = abs
		}
		uri = p
		if _, err := os.Stat(filepath.Join(p, checkpoint.ManifestKey)); err == nil && filepath.Dir(p) != p {
			return loadCheckpoint(ctx, uri, filepath.Dir(p), filepath.Base(p), cfg)
		}
	}
	if base := path.Base(uri); ckptDirRE.MatchString(base) {
		// Committed or not: an uncommitted one is reported as such.
		return loadCheckpoint(ctx, uri, parentURI(uri), base, cfg)
	}
	st, err := store.OpenExisting(ctx, uri, cfg)
	if err != nil {
		return nil, fmt.Errorf("generate: checkpoint %s: %w", uri, err)
	}
	if _, err := st.Stat(ctx, checkpoint.ManifestKey); err == nil {
		// A checkpoint directory with another name, at the top of a bucket.
		return load(ctx, st, ".")
	}
	for _, prefix := range []string{trainloop.CheckpointPrefix, ""} {
		d, _, err := checkpoint.Latest(ctx, st, prefix)
		if errors.Is(err, checkpoint.ErrNone) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("generate: checkpoint %s: %w", uri, err)
		}
		return load(ctx, st, d)
	}
	return nil, fmt.Errorf("generate: checkpoint %s: no committed checkpoint there (no manifest.json, none under %s/ckpt-*/)", uri, trainloop.CheckpointPrefix)
}

// loadCheckpoint loads the checkpoint in dir of the store at root.
func loadCheckpoint(ctx context.Context, uri, root, dir string, cfg store.Config) (*checkpoint.Checkpoint, error) {
	st, err := store.OpenExisting(ctx, root, cfg)
	if err != nil {
		return nil, fmt.Errorf("generate: checkpoint %s: %w", uri, err)
	}
	return load(ctx, st, dir)
}

// load loads and verifies the checkpoint in dir of st.
func load(ctx context.Context, st store.Store, dir string) (*checkpoint.Checkpoint, error) {
	c, err := checkpoint.Load(ctx, st, dir, nil)
	if err != nil {
		return nil, fmt.Errorf("generate: %w", err)
	}
	return c, nil
}

// parentURI is the URI of the folder holding uri's last element: "." for a bare name, "/"
// and "file:///" for one at the root.
func parentURI(uri string) string {
	i := strings.LastIndex(uri, "/")
	switch {
	case i < 0:
		return "."
	case strings.HasSuffix(uri[:i+1], ":///") || i == 0:
		return uri[:i+1]
	}
	return uri[:i]
}

// runGenerate loads the checkpoint and writes the outputs f asks for. The changed flags say
// which defaults come from the checkpoint.
func runGenerate(ctx context.Context, lg hclog.Logger, f genFlags, psiSet, cutoffSet, lodSet, crossoverSet bool) error {
	if f.out == "" && f.outDir == "" && f.mixingOut == "" && f.interpOut == "" {
		return fmt.Errorf("generate: nothing to write: give --out, --out-dir, --mixing-out or --interp-out")
	}
	switch f.noise {
	case "random", "const", "none":
	default:
		return fmt.Errorf("generate: --noise %q: want random, const or none", f.noise)
	}
	// Check every flag before the (slow) load.
	var seeds, rows, cols []uint64
	var err error
	if f.out != "" || f.outDir != "" {
		if seeds, err = parseSeeds("seeds", f.seeds); err != nil {
			return err
		}
	}
	if f.mixingOut != "" {
		if rows, err = parseSeeds("mix-rows", f.mixRows); err != nil {
			return err
		}
		if cols, err = parseSeeds("mix-cols", f.mixCols); err != nil {
			return err
		}
	}
	if f.interpOut != "" && (f.steps < 2 || f.steps > maxSeeds) {
		return fmt.Errorf("generate: --steps %d: want 2 to %d", f.steps, maxSeeds)
	}
	if f.cols < 0 || f.pad < 0 || f.pad > 64 {
		return fmt.Errorf("generate: --cols %d --pad %d: want cols >= 0 and pad 0 to 64", f.cols, f.pad)
	}
	if f.threads < 0 || f.threads > spec.MaxThreads {
		return fmt.Errorf("generate: --threads %d: want 0 (all cores) to %d", f.threads, spec.MaxThreads)
	}
	if psiSet && (math.IsNaN(f.psi) || math.IsInf(f.psi, 0)) {
		return fmt.Errorf("generate: --psi %v: want a finite number", f.psi)
	}

	c, err := openCheckpoint(ctx, f.checkpoint, f.s3)
	if err != nil {
		return err
	}
	m := c.Manifest
	s := m.Spec
	opts, err := train.OptionsFromSpec(s, 0, 1)
	if err != nil {
		return fmt.Errorf("generate: %s: job spec: %w", c.Dir, err)
	}
	cfg := opts.Model
	maxLOD := float64(cfg.Log2R() - 2)
	lod := m.LOD
	if lodSet {
		if f.lod < 0 || f.lod > maxLOD || math.IsNaN(f.lod) {
			return fmt.Errorf("generate: --lod %v: this %dx%d network has levels 0 (full) to %v", f.lod, cfg.Resolution, cfg.Resolution, maxLOD)
		}
		lod = f.lod
	}
	cur, _ := cfg.LevelAt(lod)
	layers := 2*cur - 2
	o := train.GenOptions{Psi: float32(s.Model.TruncationPsi), Cutoff: s.Model.TruncationCutoff,
		NoiseMode: f.noise, LOD: lod, UseAverage: !f.useG}
	if psiSet {
		o.Psi = float32(f.psi)
	}
	if cutoffSet {
		if f.cutoff < 0 {
			return fmt.Errorf("generate: --truncation-cutoff %d is negative", f.cutoff)
		}
		o.Cutoff = f.cutoff
	}
	crossover := min(4, layers/2)
	if crossoverSet {
		if f.crossover < 0 || f.crossover > layers {
			return fmt.Errorf("generate: --crossover %d: the network has %d style layers at %dx%d (0 to %d)", f.crossover, layers, 1<<cur, 1<<cur, layers)
		}
		crossover = f.crossover
	}

	dev, err := kernels.Open(kernels.Config{Threads: f.threads})
	if err != nil {
		return fmt.Errorf("generate: %w", err)
	}
	defer dev.Close()
	tr, err := train.New(dev, opts)
	if err != nil {
		return fmt.Errorf("generate: %w", err)
	}
	defer tr.Close()
	if err := tr.Restore(c); err != nil {
		return fmt.Errorf("generate: %w", err)
	}
	net := "Gs"
	if f.useG {
		net = "G"
	}
	lg.Info("checkpoint loaded", "checkpoint", c.Dir, "kimg", m.Kimg, "lod", lod, "render_resolution", 1<<cur,
		"network", net, "psi", o.Psi, "truncation_cutoff", o.Cutoff, "noise", o.NoiseMode)

	size := cfg.Resolution
	toImages := func(data []float32, shape []int) grid.Images {
		im := grid.Images{N: shape[0], C: shape[1], H: shape[2], W: shape[3], Data: data}
		return im.Upsample(size)
	}
	write := func(name string, im grid.Images, cols int) error {
		b, err := grid.PNG(im, cols, f.pad)
		if err != nil {
			return fmt.Errorf("generate: %s: %w", name, err)
		}
		if err := os.WriteFile(name, b, 0o644); err != nil {
			return fmt.Errorf("generate: %w", err)
		}
		lg.Info("wrote", "file", name, "images", im.N)
		return nil
	}

	if len(seeds) > 0 {
		data, shape, err := tr.GenerateEach(seeds, o)
		if err != nil {
			return fmt.Errorf("generate: %w", err)
		}
		im := toImages(data, shape)
		if f.out != "" {
			gc := f.cols
			if gc == 0 {
				gc = int(math.Ceil(math.Sqrt(float64(len(seeds)))))
			}
			if err := write(f.out, im, gc); err != nil {
				return err
			}
		}
		if f.outDir != "" {
			if err := os.MkdirAll(f.outDir, 0o755); err != nil {
				return fmt.Errorf("generate: %w", err)
			}
			per := im.C * im.H * im.W
			for i, sd := range seeds {
				one := grid.Images{N: 1, C: im.C, H: im.H, W: im.W, Data: im.Data[i*per : (i+1)*per]}
				b, err := grid.PNG(one, 1, 0)
				if err != nil {
					return fmt.Errorf("generate: seed %d: %w", sd, err)
				}
				if err := os.WriteFile(filepath.Join(f.outDir, fmt.Sprintf("seed%04d.png", sd)), b, 0o644); err != nil {
					return fmt.Errorf("generate: %w", err)
				}
			}
			lg.Info("wrote", "dir", f.outDir, "images", len(seeds))
		}
	}
	if f.mixingOut != "" {
		fig, err := mixingFigure(tr, rows, cols, crossover, o)
		if err != nil {
			return err
		}
		if err := write(f.mixingOut, fig.Upsample(size), len(cols)+1); err != nil {
			return err
		}
	}
	if f.interpOut != "" {
		data, shape, err := tr.Interpolate(f.from, f.to, f.steps, o)
		if err != nil {
			return fmt.Errorf("generate: %w", err)
		}
		if err := write(f.interpOut, toImages(data, shape), f.steps); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// mixingFigure lays out SG's style-mixing figure as (rows+1) x (cols+1) images: a blank
// corner, the column sources along the top, the row sources down the left and the mixes.
func mixingFigure(tr *train.Trainer, rows, cols []uint64, crossover int, o train.GenOptions) (grid.Images, error) {
	rowIm, shape, err := tr.GenerateEach(rows, o)
	if err != nil {
		return grid.Images{}, fmt.Errorf("generate: mixing rows: %w", err)
	}
	colIm, _, err := tr.GenerateEach(cols, o)
	if err != nil {
		return grid.Images{}, fmt.Errorf("generate: mixing columns: %w", err)
	}
	mixed, _, err := tr.GenerateMixed(rows, cols, crossover, o)
	if err != nil {
		return grid.Images{}, fmt.Errorf("generate: mixing: %w", err)
	}
	per := shape[1] * shape[2] * shape[3]
	nc := len(cols) + 1
	fig := grid.Images{N: (len(rows) + 1) * nc, C: shape[1], H: shape[2], W: shape[3]}
	fig.Data = make([]float32, fig.N*per)
	cell := func(r, c int) []float32 { return fig.Data[(r*nc+c)*per : (r*nc+c+1)*per] }
	for i := range cell(0, 0) {
		cell(0, 0)[i] = 1 // blank corner, the colour of the padding
	}
	for j := range cols {
		copy(cell(0, j+1), colIm[j*per:])
	}
	for i := range rows {
		copy(cell(i+1, 0), rowIm[i*per:])
		for j := range cols {
			copy(cell(i+1, j+1), mixed[(i*len(cols)+j)*per:])
		}
	}
	return fig, nil
}
