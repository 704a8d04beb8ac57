package dataset

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"image/color"
	"io"
	"regexp"
	"runtime"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/gantry-ml/gantry/pkg/store"
)

// ErrExists is returned (wrapped) when the output already holds a complete dataset.
var ErrExists = errors.New("dataset: output already holds a complete dataset")

// partialRecord is what Create stores under partial/ after each finished shard.
type partialRecord struct {
	OptionsHash string    `json:"options_hash"`
	Shard       ShardInfo `json:"shard"`
	NextInput   int       `json:"next_input"` // index of the first input not yet consumed
	Summary     Summary   `json:"summary"`
	Channels    int       `json:"channels"`
}

// ownKey matches the keys shardKey and partialKey make; tidy deletes nothing else.
var ownKey = regexp.MustCompile(`^(shards/[0-9]{6,}\.bin|partial/[0-9]{6,}\.json)$`)

func shardKey(i int) string   { return fmt.Sprintf("shards/%06d.bin", i) }
func partialKey(i int) string { return fmt.Sprintf("partial/%06d.json", i) }

// result is one processed input.
type result struct {
	levels [][]byte
	label  int32
	prob   *problem
	notes  []note
}

type note struct{ kind, detail string }

// pipeline holds what processing an input needs.
type pipeline struct {
	opts Options
	c    int
	bg   color.NRGBA
	fill []float32
}

func newPipeline(opts Options, c int) *pipeline {
	bg, _ := parseColor(opts.Background)
	p := &pipeline{opts: opts, c: c, bg: bg}
	switch c {
	case 1:
		p.fill = []float32{float32(0.299*float64(bg.R) + 0.587*float64(bg.G) + 0.114*float64(bg.B))}
	case 3:
		p.fill = []float32{float32(bg.R), float32(bg.G), float32(bg.B)}
	case 4:
		p.fill = []float32{float32(bg.R), float32(bg.G), float32(bg.B), 0}
	}
	return p
}

// process decodes (when needed) and shapes one input into its levels of detail.
func (p *pipeline) process(in *input) (res result) {
	res.label = in.label
	if in.refuse != nil {
		res.prob = in.refuse
		return res
	}
	img := in.img
	if img == nil {
		b, err := in.read()
		if err != nil {
			res.prob = asProblem(err)
			return res
		}
		if img, err = decodeImage(b, p.opts.MaxPixels); err != nil {
			res.prob = asProblem(err)
			return res
		}
	}
	ras := toRaster(img)
	planes, change := convert(ras, p.c, p.bg)
	if change != "" {
		res.notes = append(res.notes, note{"channels", fmt.Sprintf("%s (%dx%d) -> %d channel(s): %s", ras.modeName(), ras.w, ras.h, p.c, change)})
	}
	w, h, r := ras.w, ras.h, p.opts.Resolution
	planes, side := fitSquare(planes, w, h, p.opts.Square, p.fill)
	if w != h {
		verb := "centre-cropped"
		if p.opts.Square == "pad" {
			verb = "centre-padded"
		}
		res.notes = append(res.notes, note{"non-square", fmt.Sprintf("%dx%d %s to %dx%d (--square %s)", w, h, verb, side, side, p.opts.Square)})
	}
	switch {
	case side == r:
	case p.opts.Filter == "none" && side < r:
		planes = pad(planes, side, side, r, p.fill)
		res.notes = append(res.notes, note{"placed", fmt.Sprintf("%dx%d centre-padded to %dx%d without resampling (--filter none)", side, side, r, r)})
	case p.opts.Filter == "none":
		planes = crop(planes, side, (side-r)/2, (side-r)/2, r, r)
		res.notes = append(res.notes, note{"placed", fmt.Sprintf("%dx%d centre-cropped to %dx%d without resampling (--filter none)", side, side, r, r)})
	default:
		// Resample colour weighted by alpha so that transparent pixels do not bleed.
		if p.c == 4 {
			premultiply(planes, false)
		}
		planes = resize(planes, side, r, p.opts.Filter)
		if p.c == 4 {
			premultiply(planes, true)
		}
		res.notes = append(res.notes, note{"resized", fmt.Sprintf("%dx%d resampled to %dx%d (%s)", side, side, r, r, p.opts.Filter)})
	}
	level0 := make([]byte, p.c*r*r)
	quantize(planes, level0)
	res.levels = Pyramid(level0, p.c, r)
	return res
}

func asProblem(err error) *problem {
	var p *problem
	if errors.As(err, &p) {
		return p
	}
	return newProblem("unreadable", "%v", err)
}

// Create imports opts.Source into out and returns the manifest it wrote last. Per-file lines
// and the summary go to report. When out holds a partial import made with the same options,
// Create resumes after its last finished shard.
func Create(ctx context.Context, out store.Store, opts Options, log hclog.Logger, report io.Writer) (*Manifest, error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if _, err := out.Stat(ctx, ManifestKey); err == nil {
		return nil, fmt.Errorf("%w at %s; choose another --out or delete it", ErrExists, out.URI())
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("dataset: check %s: %w", out.URI(), err)
	}
	src, err := openSource(opts)
	if err != nil {
		return nil, err
	}
	defer src.close()
	rep := newReport(report, opts.ReportLimit)
	for _, name := range src.ignored {
		rep.ignore(name, "no image extension (png, jpg, jpeg, gif, bmp, tif, tiff, webp)")
	}
	if len(src.inputs) == 0 {
		return nil, fmt.Errorf("dataset: no images in %s: %d files, none named like an image (png, jpg, jpeg, gif, bmp, tif, tiff, webp)", opts.Source, len(src.ignored))
	}
	c, err := resolveChannels(ctx, opts, src)
	if err != nil {
		return nil, err
	}
	hash := optionsHash(opts, c)

	shards, next, err := resume(ctx, out, hash, rep, log)
	if err != nil {
		return nil, err
	}
	if next == 0 {
		rep.seen(len(src.ignored))
	}
	log.Info("import started", "source", opts.Source, "kind", src.info.Kind, "inputs", len(src.inputs),
		"out", out.URI(), "resolution", opts.Resolution, "channels", c, "resume_shard", len(shards))

	w := &shardWriter{ctx: ctx, out: out, opts: opts, c: c, hash: hash, rep: rep, log: log,
		shards: shards, labels: src.labels != nil, afterShard: testAfterShard}
	if len(shards) > 0 {
		last := shards[len(shards)-1]
		w.nextFirst = last.First + int64(last.Count)
	}
	if err := w.run(src, newPipeline(opts, c), next); err != nil {
		return nil, err
	}
	if len(w.shards) == 0 {
		return nil, fmt.Errorf("dataset: no usable images in %s\n%s", opts.Source, rep.Summary())
	}
	m := &Manifest{
		Format: manifestFormat, Version: 1, Count: w.nextFirst, Resolution: opts.Resolution,
		Channels: c, ShardSize: opts.ShardSize, Labels: src.labels, Shards: w.shards,
		Source: src.info, Options: opts, Report: rep.Summary(), Created: time.Now().UTC(),
	}
	for l := range NumLevels(opts.Resolution) {
		m.Levels = append(m.Levels, opts.Resolution>>l)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("dataset: internal error, manifest invalid: %w", err)
	}
	b, err := m.Marshal()
	if err != nil {
		return nil, err
	}
	if err := out.PutIfAbsent(ctx, ManifestKey, bytes.NewReader(b), int64(len(b))); err != nil {
		return nil, fmt.Errorf("dataset: write manifest: %w", err)
	}
	tidy(ctx, out, m, log)
	fmt.Fprintf(report, "dataset: wrote %d images in %d shards to %s\ndataset: %s\n", m.Count, len(m.Shards), out.URI(), m.Report)
	log.Info("import finished", "images", m.Count, "shards", len(m.Shards), "out", out.URI())
	return m, nil
}

// resolveChannels turns the keep policy into a channel count by reading image headers.
// TODO(#4): this reads each file once more before the import; keep the headers from a
// single pass if large remote folders make the second read costly.
func resolveChannels(ctx context.Context, opts Options, src *source) (int, error) {
	if opts.Channels != "keep" {
		return outputChannels(opts.Channels), nil
	}
	if src.idx != nil {
		if len(src.idx.Dims) == 4 {
			return src.idx.Dims[3], nil
		}
		return 1, nil
	}
	c := 0
	for i := range src.inputs {
		if i%256 == 0 && ctx.Err() != nil {
			return 0, ctx.Err()
		}
		in := &src.inputs[i]
		if in.refuse != nil {
			continue
		}
		if b, err := in.read(); err == nil {
			c = max(c, headerChannels(b))
		}
		if c == 4 {
			break
		}
	}
	if c == 0 {
		c = 3
	}
	return c, nil
}

func optionsHash(opts Options, c int) string {
	b, _ := json.Marshal(struct {
		O Options
		C int
	}{opts, c})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// resume reads the partial records of an earlier run with the same options and returns the
// shards they vouch for and the input to continue from.
func resume(ctx context.Context, out store.Store, hash string, rep *Report, log hclog.Logger) ([]ShardInfo, int, error) {
	recs, err := out.List(ctx, "partial/")
	if err != nil {
		return nil, 0, fmt.Errorf("dataset: look for a partial import: %w", err)
	}
	var shards []ShardInfo
	next := 0
	for i, info := range recs {
		if info.Key != partialKey(i) {
			break
		}
		b, err := store.ReadAll(ctx, out, info.Key)
		if err != nil {
			return nil, 0, err
		}
		var rec partialRecord
		if err := json.Unmarshal(b, &rec); err != nil {
			log.Warn("ignoring unreadable partial record", "key", info.Key, "error", err)
			break
		}
		if rec.OptionsHash != hash {
			return nil, 0, fmt.Errorf("dataset: %s holds a partial import made with other options; rerun with the same options or delete it", out.URI())
		}
		sb, err := store.ReadAll(ctx, out, rec.Shard.Key)
		if err != nil {
			break
		}
		if sum := sha256.Sum256(sb); hex.EncodeToString(sum[:]) != rec.Shard.SHA256 {
			log.Warn("partial shard does not match its record; redoing it", "key", rec.Shard.Key)
			break
		}
		shards = append(shards, rec.Shard)
		next = rec.NextInput
		rep.restore(rec.Summary)
	}
	if len(shards) > 0 {
		log.Info("resuming partial import", "shards_done", len(shards), "next_input", next)
	}
	return shards, next, nil
}

// tidy removes partial records, stale shards beyond the manifest and temporary files.
func tidy(ctx context.Context, out store.Store, m *Manifest, log hclog.Logger) {
	keep := map[string]bool{}
	for _, s := range m.Shards {
		keep[s.Key] = true
	}
	for _, prefix := range []string{"partial/", "shards/"} {
		objs, err := out.List(ctx, prefix)
		if err != nil {
			log.Warn("cannot list leftovers", "prefix", prefix, "error", err)
			continue
		}
		for _, o := range objs {
			// Only objects named as this package names them: --out may be a directory that
			// also holds the user's own files under shards/ or partial/.
			if !keep[o.Key] && ownKey.MatchString(o.Key) {
				if err := out.Delete(ctx, o.Key); err != nil {
					log.Warn("cannot delete leftover", "key", o.Key, "error", err)
				}
			}
		}
	}
	if d, ok := out.(store.EmptyDirRemover); ok {
		if err := d.RemoveEmptyDir(ctx, "partial"); err != nil {
			log.Warn("cannot remove the emptied partial/ directory", "error", err)
		}
	}
	if _, err := out.Cleanup(ctx, "", time.Hour); err != nil {
		log.Warn("cannot clean up incomplete uploads", "error", err)
	}
}

// testAfterShard lets tests slow an import down to interrupt it.
var testAfterShard func(i int)

// shardWriter groups processed images into shards and writes them with their records.
type shardWriter struct {
	ctx       context.Context
	out       store.Store
	opts      Options
	c         int
	hash      string
	rep       *Report
	log       hclog.Logger
	labels    bool
	shards    []ShardInfo
	nextFirst int64

	pendLevels [][][]byte
	pendLabels []int32

	// afterShard, when set, runs after each shard's record is written (tests).
	afterShard func(i int)
}

// idxNoted tracks IDX sources, whose images share one shape: policy lines are printed once
// per file with the image count rather than once per image.
func (w *shardWriter) run(src *source, p *pipeline, start int) error {
	workers := w.opts.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	chunk := 64 * workers
	results := make([]result, chunk)
	idxNotes := map[string]string{}
	for lo := start; lo < len(src.inputs); lo += chunk {
		if err := w.ctx.Err(); err != nil {
			return fmt.Errorf("dataset: import interrupted: %w", err)
		}
		hi := min(lo+chunk, len(src.inputs))
		var wg sync.WaitGroup
		next := make(chan int, hi-lo)
		for i := lo; i < hi; i++ {
			next <- i
		}
		close(next)
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					results[i-lo] = p.process(&src.inputs[i])
				}
			}()
		}
		wg.Wait()
		for i := lo; i < hi; i++ {
			res := &results[i-lo]
			in := &src.inputs[i]
			w.rep.seen(1)
			if res.prob != nil {
				if w.opts.OnError == "stop" {
					w.rep.skip(in.name, res.prob.kind, res.prob.detail)
					return fmt.Errorf("dataset: stopped at %s: %s (--on-error stop)", in.name, res.prob.detail)
				}
				w.rep.skip(in.name, res.prob.kind, res.prob.detail)
				continue
			}
			for _, n := range res.notes {
				if src.idx != nil {
					if idxNotes[n.kind] == "" {
						idxNotes[n.kind] = n.detail
						count := len(src.inputs)
						if w.opts.MaxImages > 0 {
							count = min(count, w.opts.MaxImages)
						}
						w.rep.policy(src.info.Path, n.kind, fmt.Sprintf("all %d images: %s", count, n.detail), 0)
					}
					w.rep.policy("", n.kind, "", -1) // counted per image; printed once
					continue
				}
				w.rep.policy(in.name, n.kind, n.detail, 1)
			}
			w.rep.imported(1)
			w.pendLevels = append(w.pendLevels, res.levels)
			w.pendLabels = append(w.pendLabels, res.label)
			res.levels = nil
			done := w.opts.MaxImages > 0 && w.nextFirst+int64(len(w.pendLevels)) >= int64(w.opts.MaxImages)
			if len(w.pendLevels) == w.opts.ShardSize || done {
				if err := w.flush(i + 1); err != nil {
					return err
				}
			}
			if done {
				if rest := len(src.inputs) - i - 1; rest > 0 {
					fmt.Fprintf(w.rep.w, "dataset: stopped after --max-images %d; %d inputs not read\n", w.opts.MaxImages, rest)
				}
				return nil
			}
		}
	}
	return w.flush(len(src.inputs))
}

// flush writes the pending images as one shard, then its partial record.
func (w *shardWriter) flush(nextInput int) error {
	if len(w.pendLevels) == 0 {
		return nil
	}
	i := len(w.shards)
	var labels []int32
	if w.labels {
		labels = w.pendLabels
	}
	b := EncodeShard(w.nextFirst, w.opts.Resolution, w.c, labels, w.pendLevels)
	sum := sha256.Sum256(b)
	info := ShardInfo{Key: shardKey(i), First: w.nextFirst, Count: len(w.pendLevels), Bytes: int64(len(b)), SHA256: hex.EncodeToString(sum[:])}
	if err := w.out.Put(w.ctx, info.Key, bytes.NewReader(b), int64(len(b))); err != nil {
		return fmt.Errorf("dataset: write shard %d: %w", i, err)
	}
	rec, _ := json.Marshal(partialRecord{OptionsHash: w.hash, Shard: info, NextInput: nextInput, Summary: w.rep.Summary(), Channels: w.c})
	if err := w.out.Put(w.ctx, partialKey(i), bytes.NewReader(rec), int64(len(rec))); err != nil {
		return fmt.Errorf("dataset: record shard %d: %w", i, err)
	}
	w.log.Debug("shard written", "key", info.Key, "images", info.Count, "bytes", info.Bytes)
	w.shards = append(w.shards, info)
	w.nextFirst += int64(info.Count)
	w.pendLevels, w.pendLabels = w.pendLevels[:0], w.pendLabels[:0]
	if w.afterShard != nil {
		w.afterShard(i)
	}
	return nil
}
