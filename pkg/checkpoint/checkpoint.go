// Package checkpoint writes and reads training checkpoints in an object store. A checkpoint is
// a directory of objects under a key prefix:
//
//	<prefix>/ckpt-000000123456/G.safetensors      tensors, one object per group
//	<prefix>/ckpt-000000123456/Gs.safetensors     (parameters, generator average, optimizer
//	<prefix>/ckpt-000000123456/opt_D.safetensors   state...), in safetensors format
//	<prefix>/ckpt-000000123456/manifest.json      written last
//
// The number in the name is the count of images shown, so names sort in training order. The
// manifest holds the job spec, the schedule position (images, kimg, lod, step), RNG state,
// optimizer and loader state, the world size, and the size and sha256 of every object.
//
// Writing puts every object first and the manifest last, create-only, so a checkpoint without
// a manifest is incomplete and is never read. The two halves may run in different processes:
// SaveObjects writes the objects and returns the encoded manifest, and a committer checks the
// objects against it (VerifyManifest) before writing it (CommitManifest, idempotent for the
// same bytes). Save does both. Loading verifies each object's size and sha256 before
// decoding it and refuses a spec whose architecture differs, naming the fields. Retention
// (Prune, PruneUpTo) keeps the last K committed checkpoints plus every M-th and collects the
// incomplete directories older than the newest committed one.
package checkpoint

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gantry-ml/gantry/pkg/safetensors"
	"github.com/gantry-ml/gantry/pkg/spec"
	"github.com/gantry-ml/gantry/pkg/store"
)

// FormatVersion is the manifest format this package writes; it reads this version and older.
const FormatVersion = 1

// ManifestKey is the name of the manifest object inside a checkpoint directory.
const ManifestKey = "manifest.json"

// maxManifestBytes bounds the manifest read into memory.
const maxManifestBytes = 64 << 20

// Errors a caller can test for with errors.Is.
var (
	// ErrIncomplete: the checkpoint has no manifest (never committed, or being written).
	ErrIncomplete = errors.New("checkpoint: incomplete (no manifest)")
	// ErrCorrupt: an object or the manifest does not match what was written.
	ErrCorrupt = errors.New("checkpoint: corrupt")
	// ErrExists: a committed checkpoint already exists in the directory.
	ErrExists = errors.New("checkpoint: already committed")
	// ErrNone: there is no committed checkpoint under the prefix.
	ErrNone = errors.New("checkpoint: no committed checkpoint")
)

// Bucket is the part of an object store checkpoints need. *store.Store values (directory and
// S3 backends) satisfy it as they are.
type Bucket interface {
	Put(ctx context.Context, key string, r io.Reader, size int64) error
	// PutIfAbsent fails with an error wrapping store.ErrExists when key exists.
	PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error
	// Get fails with an error wrapping store.ErrNotFound when key does not exist.
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	Stat(ctx context.Context, key string) (store.Info, error)
	List(ctx context.Context, prefix string) ([]store.Info, error)
	Delete(ctx context.Context, key string) error
}

var _ Bucket = store.Store(nil)

// ObjectInfo records one object of a checkpoint in its manifest.
type ObjectInfo struct {
	Name    string `json:"name"`    // group name: "G", "Gs", "opt_D"
	Key     string `json:"key"`     // key relative to the checkpoint directory
	Size    int64  `json:"size"`    // bytes
	SHA256  string `json:"sha256"`  // hex
	Tensors int    `json:"tensors"` // number of tensors inside
}

// Optimizer records an optimizer's state: which object holds its tensors and its step count
// (Adam's bias correction needs it).
type Optimizer struct {
	Object string `json:"object"`
	Step   int64  `json:"step"`
}

// Manifest describes one checkpoint. Save fills FormatVersion, Objects and (when zero)
// Created; the caller fills the rest.
type Manifest struct {
	FormatVersion int        `json:"format_version"`
	Spec          *spec.Spec `json:"spec"`
	Nimg          int64      `json:"nimg"` // images shown
	Kimg          float64    `json:"kimg"` // Nimg / 1000
	LOD           float64    `json:"lod"`  // level of detail at Nimg
	Step          int64      `json:"step"` // optimizer steps taken
	Tick          int64      `json:"tick"` // ticks completed
	Seq           int64      `json:"seq"`  // checkpoint sequence number (1, 2, ...), for retention
	WorldSize     int        `json:"world_size"`
	// RNG holds each random generator's state, opaque to this package.
	RNG map[string][]byte `json:"rng,omitempty"`
	// Optimizers maps an optimizer ("G", "D") to its state.
	Optimizers map[string]Optimizer `json:"optimizers,omitempty"`
	// EMA names the object holding the generator's moving average (Gs).
	EMA string `json:"ema,omitempty"`
	// Loader holds the data loaders' cursors, opaque to this package.
	Loader json.RawMessage `json:"loader,omitempty"`
	// Counters holds running totals (skipped non-finite steps, ...).
	Counters map[string]int64 `json:"counters,omitempty"`
	// Extra holds anything else the trainer wants back on resume.
	Extra   map[string]json.RawMessage `json:"extra,omitempty"`
	Objects []ObjectInfo               `json:"objects"`
	Created time.Time                  `json:"created"`
}

// Object is a group of tensors saved as one safetensors object.
type Object struct {
	Name     string // letters, digits, '_', '-', '.'; the key is Name + ".safetensors"
	Tensors  []safetensors.Tensor
	Metadata map[string]string
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`)

// DirName returns the checkpoint directory for a count of images shown under prefix.
func DirName(prefix string, nimg int64) string {
	name := fmt.Sprintf("ckpt-%012d", nimg)
	if prefix == "" {
		return name
	}
	return path.Join(prefix, name)
}

// Save writes the objects and then the manifest into dir: SaveObjects, then CommitManifest.
// m.Objects, m.FormatVersion and, if zero, m.Created are filled in. A directory that already
// holds a committed checkpoint is refused with ErrExists before anything is written.
func Save(ctx context.Context, b Bucket, dir string, m *Manifest, objects []Object) error {
	mb, err := SaveObjects(ctx, b, dir, m, objects)
	if err != nil {
		return err
	}
	return CommitManifest(ctx, b, dir, mb)
}

// SaveObjects writes the objects into dir and returns the manifest that commits them,
// encoded; m.Objects, m.FormatVersion and, if zero, m.Created are filled in. Nothing is
// committed: the checkpoint becomes readable when CommitManifest puts these bytes in dir
// (in a cluster the leader does, after VerifyManifest). A directory that already holds a
// manifest is refused with ErrExists before anything is written.
func SaveObjects(ctx context.Context, b Bucket, dir string, m *Manifest, objects []Object) ([]byte, error) {
	if m == nil || m.Spec == nil {
		return nil, fmt.Errorf("checkpoint: save %s: manifest without a spec", dir)
	}
	if err := store.CheckKey(dir); err != nil {
		return nil, fmt.Errorf("checkpoint: save: directory: %w", err)
	}
	if _, err := b.Stat(ctx, path.Join(dir, ManifestKey)); err == nil {
		return nil, fmt.Errorf("%w: %s", ErrExists, dir)
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("checkpoint: save %s: %w", dir, err)
	}
	seen := map[string]bool{}
	infos := make([]ObjectInfo, 0, len(objects))
	for _, o := range objects {
		if !nameRE.MatchString(o.Name) || o.Name == "manifest" {
			return nil, fmt.Errorf("checkpoint: save %s: invalid object name %q", dir, o.Name)
		}
		if seen[o.Name] {
			return nil, fmt.Errorf("checkpoint: save %s: object %q given twice", dir, o.Name)
		}
		seen[o.Name] = true
		data, err := safetensors.Encode(o.Tensors, o.Metadata)
		if err != nil {
			return nil, fmt.Errorf("checkpoint: save %s: object %s: %w", dir, o.Name, err)
		}
		sum := sha256.Sum256(data)
		key := o.Name + ".safetensors"
		if err := b.Put(ctx, path.Join(dir, key), bytes.NewReader(data), int64(len(data))); err != nil {
			return nil, fmt.Errorf("checkpoint: save %s: object %s: %w", dir, o.Name, err)
		}
		infos = append(infos, ObjectInfo{Name: o.Name, Key: key, Size: int64(len(data)),
			SHA256: hex.EncodeToString(sum[:]), Tensors: len(o.Tensors)})
	}
	m.FormatVersion = FormatVersion
	m.Objects = infos
	if m.Created.IsZero() {
		m.Created = time.Now().UTC()
	}
	if err := m.check(); err != nil {
		return nil, fmt.Errorf("checkpoint: save %s: %w", dir, err)
	}
	mb, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("checkpoint: save %s: encode manifest: %w", dir, err)
	}
	return mb, nil
}

// CommitManifest commits the checkpoint in dir by writing its encoded manifest, create-only.
// It is idempotent: when dir already holds exactly these bytes (a retried commit) it
// succeeds. A different manifest already in dir is refused with ErrExists. The bytes must
// decode as a manifest; the objects are not checked here (see VerifyManifest).
func CommitManifest(ctx context.Context, b Bucket, dir string, data []byte) error {
	if err := store.CheckKey(dir); err != nil {
		return fmt.Errorf("checkpoint: commit: directory: %w", err)
	}
	if len(data) > maxManifestBytes {
		return fmt.Errorf("%w: %s: manifest larger than %d bytes", ErrCorrupt, dir, maxManifestBytes)
	}
	if _, err := decodeManifest(data, dir); err != nil {
		return err
	}
	err := b.PutIfAbsent(ctx, path.Join(dir, ManifestKey), bytes.NewReader(data), int64(len(data)))
	if err == nil {
		return nil
	}
	if !errors.Is(err, store.ErrExists) {
		return fmt.Errorf("checkpoint: commit %s: write manifest: %w", dir, err)
	}
	have, err := ReadManifestBytes(ctx, b, dir)
	if err != nil {
		return fmt.Errorf("checkpoint: commit %s: read the manifest already there: %w", dir, err)
	}
	if !bytes.Equal(have, data) {
		return fmt.Errorf("%w: %s holds a different manifest (%d bytes, sha256 %s; this one %d bytes, sha256 %s)",
			ErrExists, dir, len(have), ManifestSHA256(have)[:16]+"...", len(data), ManifestSHA256(data)[:16]+"...")
	}
	return nil
}

// ManifestSHA256 returns the hex sha256 of an encoded manifest.
func ManifestSHA256(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// check verifies the manifest's internal consistency.
func (m *Manifest) check() error {
	names := map[string]bool{}
	for _, o := range m.Objects {
		if !nameRE.MatchString(o.Name) || o.Key != o.Name+".safetensors" {
			return fmt.Errorf("object %q has key %q; want %q", o.Name, o.Key, o.Name+".safetensors")
		}
		if names[o.Name] {
			return fmt.Errorf("object %q listed twice", o.Name)
		}
		names[o.Name] = true
		if o.Size < 0 {
			return fmt.Errorf("object %q has size %d", o.Name, o.Size)
		}
		if len(o.SHA256) != 64 {
			return fmt.Errorf("object %q has sha256 %q, want 64 hex digits", o.Name, o.SHA256)
		}
		if _, err := hex.DecodeString(o.SHA256); err != nil {
			return fmt.Errorf("object %q has sha256 %q, want 64 hex digits", o.Name, o.SHA256)
		}
	}
	for name, opt := range m.Optimizers {
		if !names[opt.Object] {
			return fmt.Errorf("optimizer %q refers to missing object %q", name, opt.Object)
		}
	}
	if m.EMA != "" && !names[m.EMA] {
		return fmt.Errorf("ema refers to missing object %q", m.EMA)
	}
	if m.WorldSize < 0 || m.Nimg < 0 || m.Step < 0 {
		return fmt.Errorf("negative world_size, nimg or step")
	}
	return nil
}

// ReadManifest reads and checks the manifest of the checkpoint in dir. A missing manifest is
// ErrIncomplete.
func ReadManifest(ctx context.Context, b Bucket, dir string) (*Manifest, error) {
	data, err := ReadManifestBytes(ctx, b, dir)
	if err != nil {
		return nil, err
	}
	return decodeManifest(data, dir)
}

// ReadManifestBytes reads the manifest of the checkpoint in dir as stored, without decoding
// it. A missing manifest is ErrIncomplete.
func ReadManifestBytes(ctx context.Context, b Bucket, dir string) ([]byte, error) {
	rc, err := b.Get(ctx, path.Join(dir, ManifestKey))
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("%w: %s: checkpoint missing or never committed", ErrIncomplete, dir)
		}
		return nil, fmt.Errorf("checkpoint: %s: read manifest: %w", dir, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, maxManifestBytes+1))
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %s: read manifest: %w", dir, err)
	}
	if len(data) > maxManifestBytes {
		return nil, fmt.Errorf("%w: %s: manifest larger than %d bytes", ErrCorrupt, dir, maxManifestBytes)
	}
	return data, nil
}

func decodeManifest(data []byte, dir string) (*Manifest, error) {
	// The saved spec is decoded over the defaults, so a field added after the checkpoint was
	// written takes its default.
	m := &Manifest{Spec: spec.Defaults()}
	if err := json.Unmarshal(data, m); err != nil {
		return nil, fmt.Errorf("%w: %s: manifest: %v", ErrCorrupt, dir, err)
	}
	if m.FormatVersion < 1 || m.FormatVersion > FormatVersion {
		return nil, fmt.Errorf("%w: %s: manifest format version %d; this build reads 1 to %d", ErrCorrupt, dir, m.FormatVersion, FormatVersion)
	}
	if err := m.check(); err != nil {
		return nil, fmt.Errorf("%w: %s: manifest: %v", ErrCorrupt, dir, err)
	}
	// The manifest is written indented; hand opaque JSON back compact, as callers marshal it.
	m.Loader = compact(m.Loader)
	for k, v := range m.Extra {
		m.Extra[k] = compact(v)
	}
	return m, nil
}

func compact(raw json.RawMessage) json.RawMessage {
	if len(raw) == 0 {
		return raw
	}
	var buf bytes.Buffer
	if json.Compact(&buf, raw) != nil {
		return raw
	}
	return buf.Bytes()
}

// Checkpoint is a loaded, verified checkpoint.
type Checkpoint struct {
	Dir      string
	Manifest *Manifest
	Objects  map[string]*safetensors.File // by object name
}

// Float32 returns the F32 tensor name of object obj, checking its shape.
func (c *Checkpoint) Float32(obj, name string, shape []int) ([]float32, error) {
	f, ok := c.Objects[obj]
	if !ok {
		return nil, fmt.Errorf("checkpoint: %s: no object %q", c.Dir, obj)
	}
	v, err := f.Float32(name, shape)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %s: object %s: %w", c.Dir, obj, err)
	}
	return v, nil
}

// Load reads the checkpoint in dir: the manifest, then every object, verifying its size and
// sha256 and decoding it. When job is not nil the saved spec must be resumable by it (see
// spec.CheckResume); the error names the fields that differ.
func Load(ctx context.Context, b Bucket, dir string, job *spec.Spec) (*Checkpoint, error) {
	m, err := ReadManifest(ctx, b, dir)
	if err != nil {
		return nil, err
	}
	if job != nil {
		if err := spec.CheckResume(m.Spec, job); err != nil {
			return nil, fmt.Errorf("checkpoint: %s: %w", dir, err)
		}
	}
	c := &Checkpoint{Dir: dir, Manifest: m, Objects: make(map[string]*safetensors.File, len(m.Objects))}
	for _, o := range m.Objects {
		data, err := readObject(ctx, b, dir, o)
		if err != nil {
			return nil, err
		}
		f, err := safetensors.Decode(data)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: object %s: %v", ErrCorrupt, dir, o.Key, err)
		}
		if len(f.Tensors) != o.Tensors {
			return nil, fmt.Errorf("%w: %s: object %s holds %d tensors, manifest says %d", ErrCorrupt, dir, o.Key, len(f.Tensors), o.Tensors)
		}
		c.Objects[o.Name] = f
	}
	return c, nil
}

// Verify checks every object of the committed checkpoint in dir against its manifest (size
// and sha256) without decoding it.
func Verify(ctx context.Context, b Bucket, dir string) (*Manifest, error) {
	data, err := ReadManifestBytes(ctx, b, dir)
	if err != nil {
		return nil, err
	}
	return VerifyManifest(ctx, b, dir, data)
}

// VerifyManifest decodes an encoded manifest and checks every object it lists in dir (size
// and sha256) without decoding the objects; the manifest need not be in the store. This is
// what a committer runs before CommitManifest. A mismatch is ErrCorrupt, naming the object.
func VerifyManifest(ctx context.Context, b Bucket, dir string, data []byte) (*Manifest, error) {
	if len(data) > maxManifestBytes {
		return nil, fmt.Errorf("%w: %s: manifest larger than %d bytes", ErrCorrupt, dir, maxManifestBytes)
	}
	m, err := decodeManifest(data, dir)
	if err != nil {
		return nil, err
	}
	for _, o := range m.Objects {
		if _, err := readObject(ctx, b, dir, o); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func readObject(ctx context.Context, b Bucket, dir string, o ObjectInfo) ([]byte, error) {
	key := path.Join(dir, o.Key)
	rc, err := b.Get(ctx, key)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("%w: %s: object %s is missing", ErrCorrupt, dir, o.Key)
		}
		return nil, fmt.Errorf("checkpoint: %s: read object %s: %w", dir, o.Key, err)
	}
	defer rc.Close()
	h := sha256.New()
	data, err := io.ReadAll(io.TeeReader(io.LimitReader(rc, o.Size+1), h))
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %s: read object %s: %w", dir, o.Key, err)
	}
	if int64(len(data)) != o.Size {
		what := "truncated"
		if int64(len(data)) > o.Size {
			what = "longer than written"
		}
		return nil, fmt.Errorf("%w: %s: object %s is %s: %d bytes, manifest says %d", ErrCorrupt, dir, o.Key, what, len(data), o.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != o.SHA256 {
		return nil, fmt.Errorf("%w: %s: object %s has sha256 %s, manifest says %s", ErrCorrupt, dir, o.Key, got[:16]+"...", o.SHA256[:16]+"...")
	}
	return data, nil
}

// Entry is one checkpoint directory found under a prefix.
type Entry struct {
	Dir       string // key of the directory
	Nimg      int64  // images shown, from the name
	Committed bool   // has a manifest
}

var dirRE = regexp.MustCompile(`^ckpt-([0-9]{12,})$`)

// List returns the checkpoint directories under prefix, committed or not, oldest first.
func List(ctx context.Context, b Bucket, prefix string) ([]Entry, error) {
	lp := prefix
	if lp != "" && !strings.HasSuffix(lp, "/") {
		lp += "/"
	}
	infos, err := b.List(ctx, lp)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: list %s: %w", prefix, err)
	}
	byDir := map[string]*Entry{}
	for _, in := range infos {
		rel := strings.TrimPrefix(in.Key, lp)
		d, file, ok := strings.Cut(rel, "/")
		if !ok || strings.Contains(file, "/") {
			continue
		}
		mm := dirRE.FindStringSubmatch(d)
		if mm == nil {
			continue
		}
		n, err := strconv.ParseInt(mm[1], 10, 64)
		if err != nil {
			continue
		}
		e := byDir[d]
		if e == nil {
			e = &Entry{Dir: DirName(prefix, n), Nimg: n}
			byDir[d] = e
		}
		if file == ManifestKey {
			e.Committed = true
		}
	}
	out := make([]Entry, 0, len(byDir))
	for _, e := range byDir {
		out = append(out, *e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Nimg < out[j].Nimg })
	return out, nil
}

// Latest returns the newest committed checkpoint under prefix and its manifest, or ErrNone.
// A committed checkpoint whose manifest cannot be read is an error, not skipped: resuming from
// an older one silently would lose progress.
func Latest(ctx context.Context, b Bucket, prefix string) (string, *Manifest, error) {
	entries, err := List(ctx, b, prefix)
	if err != nil {
		return "", nil, err
	}
	for i := len(entries) - 1; i >= 0; i-- {
		if !entries[i].Committed {
			continue
		}
		m, err := ReadManifest(ctx, b, entries[i].Dir)
		if err != nil {
			return "", nil, err
		}
		return entries[i].Dir, m, nil
	}
	return "", nil, fmt.Errorf("%w under %q", ErrNone, prefix)
}

// Retain decides which of a series of committed checkpoints to keep: the last keepLast by
// position plus those whose sequence number is a multiple of keepEvery (when keepEvery > 0).
// seqs are in training order; the result says keep or drop for each.
func Retain(seqs []int64, keepLast, keepEvery int) []bool {
	keep := make([]bool, len(seqs))
	for i, s := range seqs {
		if i >= len(seqs)-keepLast || (keepEvery > 0 && s > 0 && s%int64(keepEvery) == 0) {
			keep[i] = true
		}
	}
	return keep
}

// Prune deletes committed checkpoints under prefix that Retain drops, and incomplete
// directories older than the newest committed checkpoint (left by interrupted saves). Newer
// incomplete directories may be being written and are left alone. It deletes a checkpoint's
// manifest before its objects, so an interrupted prune never leaves a committed checkpoint with
// missing objects. It returns the directories removed. It is PruneUpTo with the newest
// committed manifest as the bound.
func Prune(ctx context.Context, b Bucket, prefix string, keepLast, keepEvery int) ([]string, error) {
	return PruneUpTo(ctx, b, prefix, "", keepLast, keepEvery)
}

// PruneUpTo is Prune bounded by upto, the directory of the newest checkpoint the caller
// knows to be committed (in a cluster: the one the leader has just recorded). Only
// directories up to and including upto are considered: retention counts the committed ones
// among them, and the incomplete ones older than upto are orphans of failed writes and are
// deleted. Directories after upto (a checkpoint whose commit is in flight, with or without
// its manifest yet) are never touched. An empty upto means the newest directory with a
// manifest. upto must be committed.
func PruneUpTo(ctx context.Context, b Bucket, prefix, upto string, keepLast, keepEvery int) ([]string, error) {
	if keepLast < 1 {
		return nil, fmt.Errorf("checkpoint: prune %s: keep_last %d must be >= 1", prefix, keepLast)
	}
	entries, err := List(ctx, b, prefix)
	if err != nil {
		return nil, err
	}
	bound := int64(-1)
	if upto != "" {
		for _, e := range entries {
			if e.Dir == upto {
				if !e.Committed {
					return nil, fmt.Errorf("%w: prune %s: bound %s has no manifest", ErrIncomplete, prefix, upto)
				}
				bound = e.Nimg
			}
		}
		if bound < 0 {
			return nil, fmt.Errorf("checkpoint: prune %s: bound %s is not a checkpoint directory under it", prefix, upto)
		}
	} else {
		for _, e := range entries {
			if e.Committed {
				bound = e.Nimg
			}
		}
	}
	var committed []Entry
	var seqs []int64
	for _, e := range entries {
		if !e.Committed || e.Nimg > bound {
			continue
		}
		m, err := ReadManifest(ctx, b, e.Dir)
		if err != nil {
			return nil, err
		}
		committed = append(committed, e)
		seqs = append(seqs, m.Seq)
	}
	var drop []string
	for i, k := range Retain(seqs, keepLast, keepEvery) {
		if !k {
			drop = append(drop, committed[i].Dir)
		}
	}
	for _, e := range entries {
		if !e.Committed && e.Nimg < bound {
			drop = append(drop, e.Dir)
		}
	}
	var removed []string
	for _, d := range drop {
		if err := removeDir(ctx, b, d); err != nil {
			return removed, err
		}
		removed = append(removed, d)
	}
	sort.Strings(removed)
	return removed, nil
}

func removeDir(ctx context.Context, b Bucket, dir string) error {
	if err := b.Delete(ctx, path.Join(dir, ManifestKey)); err != nil {
		return fmt.Errorf("checkpoint: prune %s: %w", dir, err)
	}
	infos, err := b.List(ctx, dir+"/")
	if err != nil {
		return fmt.Errorf("checkpoint: prune %s: %w", dir, err)
	}
	for _, in := range infos {
		if err := b.Delete(ctx, in.Key); err != nil {
			return fmt.Errorf("checkpoint: prune %s: %w", dir, err)
		}
	}
	// A directory store keeps real directories: take the emptied one away too (object
	// stores have none). Only pruned directories get here, which nobody writes into.
	if d, ok := b.(store.EmptyDirRemover); ok {
		if err := d.RemoveEmptyDir(ctx, dir); err != nil {
			return fmt.Errorf("checkpoint: prune %s: %w", dir, err)
		}
	}
	return nil
}
