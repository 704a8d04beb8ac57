package dataset

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/gantry-ml/gantry/pkg/store"
)

// ManifestKey is the object that marks a dataset complete.
const ManifestKey = "manifest.json"

// manifestFormat names the manifest format; Version counts its revisions.
const manifestFormat = "gantry-dataset"

// ErrIncomplete is returned (wrapped) when a location has shards but no manifest: an import
// that has not finished.
var ErrIncomplete = errors.New("dataset: incomplete dataset (no manifest)")

// Manifest describes a complete dataset. It is the last object Create writes.
type Manifest struct {
	Format     string      `json:"format"`
	Version    int         `json:"version"`
	Count      int64       `json:"count"`      // images
	Resolution int         `json:"resolution"` // full resolution R
	Channels   int         `json:"channels"`   // 1, 3 or 4
	Levels     []int       `json:"levels"`     // resolutions stored, R down to 4
	ShardSize  int         `json:"shard_size"` // images per shard (the last may hold fewer)
	Labels     *LabelInfo  `json:"labels,omitempty"`
	Shards     []ShardInfo `json:"shards"`
	Source     SourceInfo  `json:"source"`
	Options    Options     `json:"options"`
	Report     Summary     `json:"report"`
	Created    time.Time   `json:"created"`
}

// LabelInfo describes the class labels.
type LabelInfo struct {
	Classes int      `json:"classes"`         // labels run from 0 to Classes-1
	Names   []string `json:"names,omitempty"` // class folder names, when labels came from folders
	From    string   `json:"from"`            // "idx" or "folders"
}

// ShardInfo locates and checks one shard.
type ShardInfo struct {
	Key    string `json:"key"`    // object key relative to the dataset
	First  int64  `json:"first"`  // dataset index of its first image
	Count  int    `json:"count"`  // images
	Bytes  int64  `json:"bytes"`  // encoded size
	SHA256 string `json:"sha256"` // hex digest of the encoded bytes
}

// SourceInfo records where the images came from.
type SourceInfo struct {
	Kind   string `json:"kind"` // "folder", "zip" or "idx"
	Path   string `json:"path"`
	Labels string `json:"labels,omitempty"` // IDX label file
}

// ParseManifest decodes and validates a manifest.
func ParseManifest(b []byte) (*Manifest, error) {
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("dataset: manifest: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("dataset: manifest: trailing data after the JSON object")
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("dataset: manifest: %w", err)
	}
	return &m, nil
}

func (m *Manifest) validate() error {
	if m.Format != manifestFormat || m.Version != 1 {
		return fmt.Errorf("format %q version %d; this build reads %s version 1", m.Format, m.Version, manifestFormat)
	}
	if err := checkResolution(m.Resolution); err != nil {
		return errors.New(strings.TrimPrefix(err.Error(), "dataset: ")) // ParseManifest adds the prefix
	}
	if m.Channels != 1 && m.Channels != 3 && m.Channels != 4 {
		return fmt.Errorf("%d channels; want 1, 3 or 4", m.Channels)
	}
	if len(m.Levels) != NumLevels(m.Resolution) {
		return fmt.Errorf("%d levels listed for resolution %d; want %d", len(m.Levels), m.Resolution, NumLevels(m.Resolution))
	}
	for l, side := range m.Levels {
		if side != m.Resolution>>l {
			return fmt.Errorf("level %d has resolution %d; want %d", l, side, m.Resolution>>l)
		}
	}
	if m.ShardSize < 1 || m.ShardSize > maxShardN {
		return fmt.Errorf("shard size %d", m.ShardSize)
	}
	if m.Labels != nil && (m.Labels.Classes < 1 || (m.Labels.Names != nil && len(m.Labels.Names) != m.Labels.Classes)) {
		return fmt.Errorf("labels: %d classes with %d names", m.Labels.Classes, len(m.Labels.Names))
	}
	var next int64
	seen := map[string]bool{}
	for i, s := range m.Shards {
		if err := store.CheckKey(s.Key); err != nil {
			return fmt.Errorf("shard %d: %w", i, err)
		}
		if seen[s.Key] {
			return fmt.Errorf("shard %d: key %s listed twice", i, s.Key)
		}
		seen[s.Key] = true
		if s.First != next || s.Count < 1 || s.Count > m.ShardSize {
			return fmt.Errorf("shard %d (%s): first %d count %d; want first %d and 1..%d images", i, s.Key, s.First, s.Count, next, m.ShardSize)
		}
		if want := shardSize(s.Count, m.Resolution, m.Channels, m.Labels != nil); s.Bytes != want {
			return fmt.Errorf("shard %d (%s): %d bytes; its shape implies %d", i, s.Key, s.Bytes, want)
		}
		if d, err := hex.DecodeString(s.SHA256); err != nil || len(d) != 32 {
			return fmt.Errorf("shard %d (%s): sha256 %q is not 64 hex digits", i, s.Key, s.SHA256)
		}
		next += int64(s.Count)
	}
	if next != m.Count || m.Count < 1 {
		return fmt.Errorf("count %d but shards hold %d images", m.Count, next)
	}
	return nil
}

// Marshal encodes the manifest as indented JSON.
func (m *Manifest) Marshal() ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("dataset: encode manifest: %w", err)
	}
	return append(b, '\n'), nil
}
