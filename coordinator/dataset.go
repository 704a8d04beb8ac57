package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/gantry-ml/gantry/pkg/dataset"
	"github.com/gantry-ml/gantry/pkg/store"
)

// newDatasetCmd returns `coordinator dataset` with its create and inspect subcommands.
func newDatasetCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dataset",
		Short: "Import images into Gantry's sharded dataset format and inspect the result",
	}
	cmd.AddCommand(newDatasetCreateCmd(), newDatasetInspectCmd())
	return cmd
}

func datasetLogger(level string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "dataset", Level: hclog.LevelFromString(level), Output: os.Stderr})
}

func newDatasetCreateCmd() *cobra.Command {
	var (
		opts     dataset.Options
		out      string
		s3       store.Config
		logLevel string
	)
	cmd := &cobra.Command{
		Use:   "create --source PATH --out URI --resolution R",
		Short: "Import a folder of images, a zip of images or IDX files into shards and a manifest",
		Long: `Reads every image of the source, brings it to R x R with the chosen square, filter and
channel policies, and writes shards holding every level of detail from R down to 4x4 plus
manifest.json (written last) to the output URI: a directory, file:///dir or s3://bucket/prefix.
Each skipped, refused or converted input is reported on its own line, followed by a summary.
A run that was interrupted leaves no manifest; rerunning it with the same options resumes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return fmt.Errorf("dataset create: --out is required (a directory, file:///dir or s3://bucket/prefix)")
			}
			log := datasetLogger(logLevel)
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			s3.Logger = log.Named("store")
			// A local --out that this run creates is removed again when the import fails
			// before writing anything (bad flags, a missing or empty source); os.Remove
			// leaves a directory that holds anything, such as a partial import to resume.
			created := missingDirs(out)
			st, err := store.Open(ctx, out, s3)
			if err != nil {
				return err
			}
			_, err = dataset.Create(ctx, st, opts, log, cmd.ErrOrStderr())
			if err != nil {
				for _, d := range created {
					if os.Remove(d) != nil {
						break
					}
				}
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Source, "source", "", "folder of images (recursive), .zip of images, or IDX image file (gzip or not)")
	f.StringVar(&opts.Labels, "labels", "", "IDX label file matching an IDX source")
	f.BoolVar(&opts.ClassFolders, "class-folders", false, "label images by their top-level folder (folder and zip sources)")
	f.StringVar(&out, "out", "", "output URI: directory, file:///dir or s3://bucket/prefix")
	f.IntVar(&opts.Resolution, "resolution", 0, "output resolution, a power of two from 4 to 16384")
	f.StringVar(&opts.Square, "square", "crop", "non-square images: crop (centre) or pad (centre, with --background)")
	f.StringVar(&opts.Filter, "filter", "lanczos", "resize filter: lanczos, bicubic, bilinear, box, nearest, or none (pad/crop to R, no resampling)")
	f.StringVar(&opts.Channels, "channels", "keep", "channel policy: keep (widest mode among inputs), gray, rgb, rgba")
	f.StringVar(&opts.Background, "background", "ffffff", "RGB hex colour for padding and for compositing alpha")
	f.IntVar(&opts.MaxImages, "max-images", 0, "import at most this many images (0: all)")
	f.StringVar(&opts.OnError, "on-error", "skip", "bad input: skip (report and continue) or stop")
	f.IntVar(&opts.ShardSize, "shard-size", 2048, "images per shard")
	f.Int64Var(&opts.MaxPixels, "max-pixels", 8192*8192, "refuse images whose header claims more pixels (checked before decoding)")
	f.IntVar(&opts.Workers, "workers", 0, "decoding goroutines (0: one per CPU)")
	f.IntVar(&opts.ReportLimit, "report-limit", 20, "per-file lines printed per kind (-1: all); the summary counts every file")
	f.StringVar(&logLevel, "log-level", "info", "log level: trace, debug, info, warn, error")
	s3.BindFlags(f)
	return cmd
}

// missingDirs returns the directories that opening the local store uri would create, deepest
// first (none for S3 URIs).
func missingDirs(uri string) []string {
	p := strings.TrimPrefix(uri, "file://")
	if strings.Contains(p, "://") || p == "" {
		return nil
	}
	p, err := filepath.Abs(p)
	if err != nil {
		return nil
	}
	var dirs []string
	for {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			return dirs
		}
		dirs = append(dirs, p)
		parent := filepath.Dir(p)
		if parent == p {
			return dirs
		}
		p = parent
	}
}

func newDatasetInspectCmd() *cobra.Command {
	var (
		s3      store.Config
		grid    string
		gridN   int
		lod     int
		verify  bool
		jsonOut bool
	)
	cmd := &cobra.Command{
		Use:   "inspect URI",
		Short: "Print a dataset's manifest, optionally verify every shard and write a sample grid PNG",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("dataset inspect: want one dataset URI (a directory, file:///dir or s3://bucket/prefix), got %d arguments", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if gridN < 1 {
				return fmt.Errorf("dataset inspect: --grid-count %d; want 1 or more", gridN)
			}
			st, err := store.OpenExisting(ctx, args[0], s3)
			if err != nil {
				return err
			}
			m, err := dataset.OpenManifest(ctx, st)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if jsonOut {
				b, err := m.Marshal()
				if err != nil {
					return err
				}
				_, err = w.Write(b)
				return err
			}
			printManifest(w, st.URI(), m)
			if verify {
				for i := range m.Shards {
					if _, err := dataset.ReadShard(ctx, st, m, i); err != nil {
						return err
					}
				}
				fmt.Fprintf(w, "verified  %d shards: sha256, checksum and shape match\n", len(m.Shards))
			}
			if grid != "" {
				if err := writeGrid(ctx, st, m, grid, gridN, lod); err != nil {
					return err
				}
				fmt.Fprintf(w, "grid      %s\n", grid)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&grid, "grid", "", "write a PNG grid of sample images to this local path")
	f.IntVar(&gridN, "grid-count", 64, "images in the grid, spread evenly over the dataset")
	f.IntVar(&lod, "lod", 0, "level of detail for the grid (0: full resolution)")
	f.BoolVar(&verify, "verify", false, "read every shard and check its sha256, checksum and shape")
	f.BoolVar(&jsonOut, "json", false, "print the manifest as JSON")
	s3.BindFlags(f)
	return cmd
}

func printManifest(w io.Writer, uri string, m *dataset.Manifest) {
	var bytes int64
	for _, s := range m.Shards {
		bytes += s.Bytes
	}
	levels := make([]string, len(m.Levels))
	for i, l := range m.Levels {
		levels[i] = fmt.Sprint(l)
	}
	fmt.Fprintf(w, "dataset   %s\n", uri)
	fmt.Fprintf(w, "images    %d in %d shards of up to %d (%d bytes)\n", m.Count, len(m.Shards), m.ShardSize, bytes)
	fmt.Fprintf(w, "shape     %d channel(s) x %d x %d; levels %s\n", m.Channels, m.Resolution, m.Resolution, strings.Join(levels, " "))
	if m.Labels != nil {
		fmt.Fprintf(w, "labels    %d classes from %s", m.Labels.Classes, m.Labels.From)
		if len(m.Labels.Names) > 0 {
			fmt.Fprintf(w, ": %s", strings.Join(m.Labels.Names, ", "))
		}
		fmt.Fprintln(w)
	} else {
		fmt.Fprintln(w, "labels    none")
	}
	fmt.Fprintf(w, "source    %s %s", m.Source.Kind, m.Source.Path)
	if m.Source.Labels != "" {
		fmt.Fprintf(w, " (labels %s)", m.Source.Labels)
	}
	fmt.Fprintln(w)
	o := m.Options
	fmt.Fprintf(w, "options   square=%s filter=%s channels=%s background=%s on-error=%s max-images=%d max-pixels=%d\n",
		o.Square, o.Filter, o.Channels, o.Background, o.OnError, o.MaxImages, o.MaxPixels)
	fmt.Fprintf(w, "import    %s\n", strings.ReplaceAll(m.Report.String(), "\n", "\n          "))
	fmt.Fprintf(w, "created   %s\n", m.Created.Format("2006-01-02 15:04:05 UTC"))
}

// writeGrid tiles n images, spread evenly over the dataset, at level lod into a PNG.
func writeGrid(ctx context.Context, st store.Store, m *dataset.Manifest, path string, n, lod int) error {
	if lod < 0 || lod >= len(m.Levels) {
		return fmt.Errorf("dataset inspect: --lod %d; this dataset has levels 0..%d", lod, len(m.Levels)-1)
	}
	n = max(1, min(n, int(m.Count)))
	cols := int(math.Ceil(math.Sqrt(float64(n))))
	rows := (n + cols - 1) / cols
	side, c := m.Levels[lod], m.Channels
	gw, gh := cols*side, rows*side
	pix := make([]byte, c*gw*gh)
	cache := map[int]*dataset.Shard{}
	for k := range n {
		idx := int64(k) * m.Count / int64(n)
		si := 0
		for si+1 < len(m.Shards) && m.Shards[si+1].First <= idx {
			si++
		}
		sh, ok := cache[si]
		if !ok {
			var err error
			if sh, err = dataset.ReadShard(ctx, st, m, si); err != nil {
				return err
			}
			cache[si] = sh
		}
		img := sh.Image(lod, int(idx-m.Shards[si].First))
		x0, y0 := (k%cols)*side, (k/cols)*side
		for ch := range c {
			for y := range side {
				copy(pix[ch*gw*gh+(y0+y)*gw+x0:], img[(ch*side+y)*side:(ch*side+y+1)*side])
			}
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("dataset inspect: grid: %w", err)
	}
	if err := dataset.EncodePNG(f, pix, c, gw, gh); err != nil {
		f.Close()
		return fmt.Errorf("dataset inspect: grid %s: %w", path, err)
	}
	return f.Close()
}
