package dataset

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/hashicorp/go-hclog"

	"github.com/gantry-ml/gantry/pkg/store"
)

// OpenManifest reads and validates the manifest of the dataset in st. A location with
// shards but no manifest fails with ErrIncomplete.
func OpenManifest(ctx context.Context, st store.Store) (*Manifest, error) {
	b, err := store.ReadAll(ctx, st, ManifestKey)
	if errors.Is(err, store.ErrNotFound) {
		if objs, lerr := st.List(ctx, "shards/"); lerr == nil && len(objs) > 0 {
			return nil, fmt.Errorf("%w at %s: %d shards but no %s; rerun `coordinator dataset create` with the same options to finish it",
				ErrIncomplete, st.URI(), len(objs), ManifestKey)
		}
		return nil, fmt.Errorf("dataset: no dataset at %s (no %s)", st.URI(), ManifestKey)
	}
	if err != nil {
		return nil, err
	}
	m, err := ParseManifest(b)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, st.URI())
	}
	return m, nil
}

// ReadShard fetches shard i of m from st, verifies its SHA-256 and decodes it.
func ReadShard(ctx context.Context, st store.Store, m *Manifest, i int) (*Shard, error) {
	if i < 0 || i >= len(m.Shards) {
		return nil, fmt.Errorf("dataset: shard %d out of range (0..%d)", i, len(m.Shards)-1)
	}
	info := m.Shards[i]
	b, err := store.ReadAll(ctx, st, info.Key)
	if err != nil {
		return nil, fmt.Errorf("dataset: shard %d: %w", i, err)
	}
	return verifyShard(b, m, i)
}

func verifyShard(b []byte, m *Manifest, i int) (*Shard, error) {
	info := m.Shards[i]
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != info.SHA256 {
		return nil, fmt.Errorf("dataset: shard %d (%s): sha256 %x does not match the manifest's %s", i, info.Key, sum, info.SHA256)
	}
	return decodeFor(b, m, i)
}

// decodeFor decodes shard i's bytes (already hashed) and checks them against the manifest.
func decodeFor(b []byte, m *Manifest, i int) (*Shard, error) {
	info := m.Shards[i]
	s, err := DecodeShard(b)
	if err != nil {
		return nil, fmt.Errorf("dataset: shard %d (%s): %w", i, info.Key, err)
	}
	if s.Resolution != m.Resolution || s.Channels != m.Channels || s.Count() != info.Count ||
		s.First != info.First || (s.Labels != nil) != (m.Labels != nil) {
		return nil, fmt.Errorf("dataset: shard %d (%s): shape differs from the manifest", i, info.Key)
	}
	return s, nil
}

// Cursor is a position in a loader's stream: the next image is number Position of epoch
// Epoch. It is JSON-serialisable for checkpoints.
type Cursor struct {
	Epoch    int `json:"epoch"`
	Position int `json:"position"`
}

// Batch is one minibatch: N images of C x H x W float32 in [-1, 1], NCHW.
type Batch struct {
	Data       []float32
	N, C, H, W int
	Labels     []int32 // one per image, nil when the dataset has no labels
	Indices    []int64 // dataset index of each image
	Mirrored   []bool  // whether each image was flipped left-right
	Cursor     Cursor  // position after this batch
}

// LoaderConfig configures a Loader.
type LoaderConfig struct {
	Store    store.Store  // where the dataset lives
	Manifest *Manifest    // nil: read from Store
	Shards   []int        // shard indices this worker reads; nil means all
	Batch    int          // images per batch
	LOD      int          // level of detail: 0 is full resolution, each step halves it
	Seed     uint64       // shuffling and mirroring seed
	Mirror   bool         // flip images left-right at random (deterministically)
	Prefetch int          // batches prepared ahead (default 2)
	Window   int          // shards shuffled together in memory (default: all of them)
	CacheDir string       // local directory caching shards by SHA-256 ("" for none)
	Cursor   Cursor       // where the stream starts
	Logger   hclog.Logger // nil discards
}

// Loader streams minibatches from a set of shards. Next is for one consumer goroutine.
type Loader struct {
	cfg    LoaderConfig
	m      *Manifest
	shards []int
	total  int // images in the assigned shards
	cursor Cursor

	cancel context.CancelFunc
	wg     sync.WaitGroup
	out    chan item
	err    error
	free   chan []float32 // batch buffers handed back through Release
}

type item struct {
	b   Batch
	err error
}

// NewLoader checks cfg and starts prefetching from cfg.Cursor.
func NewLoader(ctx context.Context, cfg LoaderConfig) (*Loader, error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Prefetch <= 0 {
		cfg.Prefetch = 2
	}
	m := cfg.Manifest
	if m == nil {
		var err error
		if m, err = OpenManifest(ctx, cfg.Store); err != nil {
			return nil, err
		}
	}
	l := &Loader{cfg: cfg, m: m, cursor: cfg.Cursor, free: make(chan []float32, cfg.Prefetch+2)}
	l.shards = cfg.Shards
	if l.shards == nil {
		for i := range m.Shards {
			l.shards = append(l.shards, i)
		}
	}
	if len(l.shards) == 0 {
		return nil, fmt.Errorf("dataset: loader given no shards")
	}
	seen := map[int]bool{}
	for _, s := range l.shards {
		if s < 0 || s >= len(m.Shards) || seen[s] {
			return nil, fmt.Errorf("dataset: loader shard %d invalid or repeated (dataset has %d shards)", s, len(m.Shards))
		}
		seen[s] = true
		l.total += m.Shards[s].Count
	}
	if cfg.Batch < 1 {
		return nil, fmt.Errorf("dataset: batch size %d; want at least 1", cfg.Batch)
	}
	if cfg.LOD < 0 || cfg.LOD >= len(m.Levels) {
		return nil, fmt.Errorf("dataset: lod %d; this dataset has levels 0..%d (%d down to 4 pixels)", cfg.LOD, len(m.Levels)-1, m.Resolution)
	}
	if cfg.Cursor.Epoch < 0 || cfg.Cursor.Position < 0 || cfg.Cursor.Position >= l.total {
		return nil, fmt.Errorf("dataset: cursor %+v outside an epoch of %d images", cfg.Cursor, l.total)
	}
	if l.cfg.Window <= 0 || l.cfg.Window > len(l.shards) {
		l.cfg.Window = len(l.shards)
	}
	if cfg.CacheDir != "" {
		if err := os.MkdirAll(cfg.CacheDir, 0o755); err != nil {
			return nil, fmt.Errorf("dataset: shard cache %s: %w", cfg.CacheDir, err)
		}
	}
	l.start()
	return l, nil
}

// Manifest returns the dataset's manifest.
func (l *Loader) Manifest() *Manifest { return l.m }

// Images returns the number of images in one epoch.
func (l *Loader) Images() int { return l.total }

// Cursor returns the position after the last batch Next returned.
func (l *Loader) Cursor() Cursor { return l.cursor }

// Next returns the next minibatch.
func (l *Loader) Next(ctx context.Context) (Batch, error) {
	if l.err != nil {
		return Batch{}, l.err
	}
	select {
	case <-ctx.Done():
		return Batch{}, ctx.Err()
	case it, ok := <-l.out:
		if !ok {
			l.err = fmt.Errorf("dataset: loader closed")
			return Batch{}, l.err
		}
		if it.err != nil {
			l.err = it.err
			return Batch{}, it.err
		}
		l.cursor = it.b.Cursor
		return it.b, nil
	}
}

// Release hands b's data buffer back for reuse by a later batch. Calling it is optional;
// b must not be used afterwards.
func (l *Loader) Release(b Batch) {
	select {
	case l.free <- b.Data:
	default:
	}
}

// buffer returns a float buffer of n elements, reusing a released one when it fits.
func (l *Loader) buffer(n int) []float32 {
	for {
		select {
		case buf := <-l.free:
			if cap(buf) >= n {
				return buf[:n]
			}
		default:
			return make([]float32, n)
		}
	}
}

// SetLOD switches later batches to level of detail lod, continuing from Cursor.
func (l *Loader) SetLOD(lod int) error {
	if lod < 0 || lod >= len(l.m.Levels) {
		return fmt.Errorf("dataset: lod %d; this dataset has levels 0..%d", lod, len(l.m.Levels)-1)
	}
	if lod == l.cfg.LOD {
		return nil
	}
	l.stop()
	l.cfg.LOD = lod
	l.err = nil
	l.start()
	return nil
}

// Close stops the background work. It is idempotent.
func (l *Loader) Close() error {
	l.stop()
	l.err = fmt.Errorf("dataset: loader closed")
	return nil
}

func (l *Loader) start() {
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	l.out = make(chan item, l.cfg.Prefetch)
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer close(l.out)
		l.produce(ctx, l.cursor, l.out)
	}()
}

func (l *Loader) stop() {
	if l.cancel != nil {
		l.cancel()
		for range l.out {
		}
		l.wg.Wait()
		l.cancel = nil
	}
}

// epochPlan is the image order of one epoch: windows of shards, each shuffled inside.
type epochPlan struct {
	windows [][]int // shard indices per window
	starts  []int   // epoch position where each window starts
	sizes   []int   // images per window
}

func (l *Loader) plan(epoch int) epochPlan {
	order := append([]int(nil), l.shards...)
	sort.Ints(order)
	rng := rand.New(rand.NewPCG(l.cfg.Seed, uint64(epoch)<<1))
	rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	var p epochPlan
	pos := 0
	for i := 0; i < len(order); i += l.cfg.Window {
		w := order[i:min(i+l.cfg.Window, len(order))]
		n := 0
		for _, s := range w {
			n += l.m.Shards[s].Count
		}
		p.windows = append(p.windows, w)
		p.starts = append(p.starts, pos)
		p.sizes = append(p.sizes, n)
		pos += n
	}
	return p
}

// windowPerm is the shuffled order of images inside window w of epoch.
func (l *Loader) windowPerm(epoch, w, n int) []int {
	rng := rand.New(rand.NewPCG(l.cfg.Seed, uint64(epoch)<<1|1^uint64(w)<<32))
	return rng.Perm(n)
}

// mirrored decides the flip of dataset image idx in epoch.
func (l *Loader) mirrored(epoch int, idx int64) bool {
	if !l.cfg.Mirror {
		return false
	}
	x := l.cfg.Seed ^ uint64(epoch)*0x9e3779b97f4a7c15 ^ uint64(idx)*0xbf58476d1ce4e5b9
	x ^= x >> 31
	x *= 0x94d049bb133111eb
	x ^= x >> 29
	return x&1 == 1
}

// window is the decoded shards of one window with its image order.
type window struct {
	epoch, index int
	ids          []int // shard indices, in window order
	shards       []*Shard
	perm         []int
	offsets      []int // first window image of each shard
}

func (l *Loader) produce(ctx context.Context, cur Cursor, out chan<- item) {
	var win *window
	var plan epochPlan
	planEpoch := -1
	var warm sync.WaitGroup
	defer warm.Wait()
	lod := l.cfg.LOD
	side := l.m.Resolution >> lod
	c := l.m.Channels
	per := c * side * side
	for {
		b := Batch{N: l.cfg.Batch, C: c, H: side, W: side, Data: l.buffer(l.cfg.Batch * per),
			Indices: make([]int64, l.cfg.Batch), Mirrored: make([]bool, l.cfg.Batch)}
		if l.m.Labels != nil {
			b.Labels = make([]int32, l.cfg.Batch)
		}
		for k := range l.cfg.Batch {
			if planEpoch != cur.Epoch {
				plan, planEpoch = l.plan(cur.Epoch), cur.Epoch
			}
			w := sort.Search(len(plan.starts), func(i int) bool { return plan.starts[i] > cur.Position }) - 1
			if win == nil || win.epoch != cur.Epoch || win.index != w {
				var err error
				win, err = l.loadWindow(ctx, cur.Epoch, w, plan.windows[w], win)
				if err != nil {
					send(ctx, out, item{err: err})
					return
				}
				l.warmNext(ctx, &warm, cur.Epoch, w, plan)
			}
			j := win.perm[cur.Position-plan.starts[w]]
			si := sort.Search(len(win.offsets), func(i int) bool { return win.offsets[i] > j }) - 1
			sh := win.shards[si]
			local := j - win.offsets[si]
			img := sh.Image(lod, local)
			idx := sh.First + int64(local)
			flip := l.mirrored(cur.Epoch, idx)
			dst := b.Data[k*per : (k+1)*per]
			toFloat(dst, img, c, side, flip)
			b.Indices[k], b.Mirrored[k] = idx, flip
			if b.Labels != nil {
				b.Labels[k] = sh.Labels[local]
			}
			cur.Position++
			if cur.Position == l.total {
				cur = Cursor{Epoch: cur.Epoch + 1}
			}
		}
		b.Cursor = cur
		if !send(ctx, out, item{b: b}) {
			return
		}
	}
}

func send(ctx context.Context, out chan<- item, it item) bool {
	select {
	case out <- it:
		return true
	case <-ctx.Done():
		return false
	}
}

// byteToFloat maps a stored byte to [-1, 1].
var byteToFloat = func() (t [256]float32) {
	for i := range t {
		t[i] = float32(i)*(1/127.5) - 1
	}
	return t
}()

// toFloat converts one planar uint8 image to [-1, 1], flipping rows when asked.
func toFloat(dst []float32, img []byte, c, side int, flip bool) {
	lut := &byteToFloat
	if !flip {
		dst = dst[:len(img)]
		for i, v := range img {
			dst[i] = lut[v]
		}
		return
	}
	for r := range c * side {
		row := img[r*side : (r+1)*side]
		d := dst[r*side : (r+1)*side]
		for x, v := range row {
			d[side-1-x] = lut[v]
		}
	}
}

// loadWindow decodes the shards of window w, reusing those prev already holds (with one
// window, every epoch reuses all of them).
func (l *Loader) loadWindow(ctx context.Context, epoch, w int, shardIdx []int, prev *window) (*window, error) {
	win := &window{epoch: epoch, index: w, ids: shardIdx}
	held := map[int]*Shard{}
	if prev != nil {
		for i, id := range prev.ids {
			held[id] = prev.shards[i]
		}
	}
	n := 0
	for _, s := range shardIdx {
		sh, ok := held[s]
		if !ok {
			var err error
			if sh, err = l.fetch(ctx, s); err != nil {
				return nil, err
			}
		}
		win.shards = append(win.shards, sh)
		win.offsets = append(win.offsets, n)
		n += sh.Count()
	}
	win.perm = l.windowPerm(epoch, w, n)
	return win, nil
}

// warmNext downloads the next window's shards into the disk cache in the background.
func (l *Loader) warmNext(ctx context.Context, wg *sync.WaitGroup, epoch, w int, plan epochPlan) {
	if l.cfg.CacheDir == "" || len(plan.windows) == 1 {
		return
	}
	var next []int
	if w+1 < len(plan.windows) {
		next = plan.windows[w+1]
	} else {
		next = l.plan(epoch + 1).windows[0]
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for _, s := range next {
			if _, err := l.cached(ctx, s); err != nil {
				l.cfg.Logger.Debug("shard prefetch failed", "shard", s, "error", err)
				return
			}
		}
	}()
}

// cached makes sure shard s is in the disk cache and returns its bytes.
func (l *Loader) cached(ctx context.Context, s int) ([]byte, error) {
	info := l.m.Shards[s]
	path := filepath.Join(l.cfg.CacheDir, info.SHA256+".shard")
	if b, err := os.ReadFile(path); err == nil {
		sum := sha256.Sum256(b)
		if hex.EncodeToString(sum[:]) == info.SHA256 {
			return b, nil
		}
		l.cfg.Logger.Warn("cached shard corrupt; fetching it again", "path", path)
	}
	b, err := store.ReadAll(ctx, l.cfg.Store, info.Key)
	if err != nil {
		return nil, fmt.Errorf("dataset: shard %d: %w", s, err)
	}
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != info.SHA256 {
		return nil, fmt.Errorf("dataset: shard %d (%s): sha256 does not match the manifest", s, info.Key)
	}
	tmp, err := os.CreateTemp(l.cfg.CacheDir, ".tmp-*")
	if err == nil {
		_, err = tmp.Write(b)
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp.Name(), path)
		}
		if err != nil {
			os.Remove(tmp.Name())
		}
	}
	if err != nil {
		l.cfg.Logger.Warn("cannot cache shard", "path", path, "error", err)
	}
	return b, nil
}

func (l *Loader) fetch(ctx context.Context, s int) (*Shard, error) {
	if l.cfg.CacheDir == "" {
		return ReadShard(ctx, l.cfg.Store, l.m, s)
	}
	b, err := l.cached(ctx, s)
	if err != nil {
		return nil, err
	}
	return decodeFor(b, l.m, s)
}
