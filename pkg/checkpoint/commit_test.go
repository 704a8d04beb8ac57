package checkpoint

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/gantry-ml/gantry/pkg/store"
)

// TestSplitCommit writes the objects and the manifest in two steps, as a cluster does (rank 0
// the objects, the leader the manifest after checking them).
func TestSplitCommit(t *testing.T) {
	eachBackend(t, func(t *testing.T, b store.Store) {
		ctx := context.Background()
		dir := DirName("ckpt", 123456)
		m := manifest(t)
		mb, err := SaveObjects(ctx, b, dir, m, state())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Load(ctx, b, dir, nil); !errors.Is(err, ErrIncomplete) {
			t.Fatalf("objects without a manifest are readable: %v", err)
		}
		if es, _ := List(ctx, b, "ckpt"); len(es) != 1 || es[0].Committed {
			t.Fatalf("List after SaveObjects: %+v", es)
		}
		got, err := VerifyManifest(ctx, b, dir, mb)
		if err != nil {
			t.Fatalf("VerifyManifest of intact objects: %v", err)
		}
		if got.Seq != m.Seq || len(got.Objects) != len(state()) {
			t.Fatalf("VerifyManifest returned seq %d with %d objects", got.Seq, len(got.Objects))
		}

		// A flipped byte and a truncated object are named; nothing is committed.
		key := path.Join(dir, "opt_G.safetensors")
		orig, err := store.ReadAll(ctx, b, key)
		if err != nil {
			t.Fatal(err)
		}
		bad := bytes.Clone(orig)
		bad[len(bad)/2] ^= 0x80
		for _, c := range []struct {
			data []byte
			want string
		}{{bad, "opt_G.safetensors has sha256"}, {orig[:len(orig)-1], "opt_G.safetensors is truncated"}} {
			if err := b.Put(ctx, key, bytes.NewReader(c.data), int64(len(c.data))); err != nil {
				t.Fatal(err)
			}
			if _, err := VerifyManifest(ctx, b, dir, mb); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("VerifyManifest: %v, want ErrCorrupt with %q", err, c.want)
			}
		}
		if err := b.Put(ctx, key, bytes.NewReader(orig), int64(len(orig))); err != nil {
			t.Fatal(err)
		}

		// Not a manifest: refused, nothing written.
		if err := CommitManifest(ctx, b, dir, []byte(`{"format_version": 1, "objects": [{"name": "G"}]}`)); !errors.Is(err, ErrCorrupt) {
			t.Errorf("CommitManifest of a bad manifest: %v", err)
		}
		if _, err := ReadManifestBytes(ctx, b, dir); !errors.Is(err, ErrIncomplete) {
			t.Fatalf("a refused manifest was written: %v", err)
		}

		if err := CommitManifest(ctx, b, dir, mb); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(ctx, b, dir, nil); err != nil {
			t.Fatalf("Load after CommitManifest: %v", err)
		}
		if have, _ := ReadManifestBytes(ctx, b, dir); !bytes.Equal(have, mb) {
			t.Errorf("the stored manifest differs from the bytes committed")
		}
		// The same bytes again (a retry) succeed; other bytes are refused and change nothing.
		if err := CommitManifest(ctx, b, dir, mb); err != nil {
			t.Errorf("CommitManifest retry with the same bytes: %v", err)
		}
		other := bytes.Replace(mb, []byte(`"tick": 12`), []byte(`"tick": 13`), 1)
		if bytes.Equal(other, mb) {
			t.Fatal("test setup: tick not found in the manifest")
		}
		if err := CommitManifest(ctx, b, dir, other); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "holds a different manifest") {
			t.Errorf("CommitManifest over a different manifest: %v", err)
		}
		if have, _ := ReadManifestBytes(ctx, b, dir); !bytes.Equal(have, mb) {
			t.Errorf("a refused commit replaced the manifest")
		}
		// Objects are never written under a committed manifest.
		if _, err := SaveObjects(ctx, b, dir, manifest(t), state()); !errors.Is(err, ErrExists) {
			t.Errorf("SaveObjects into a committed directory: %v", err)
		}
		if sum := ManifestSHA256(mb); len(sum) != 64 {
			t.Errorf("ManifestSHA256 = %q", sum)
		}
	})
}

// TestPruneUpTo bounds retention by the checkpoint the caller knows committed: orphans below
// it are collected, nothing after it is touched (a commit in flight, objects only, or a
// manifest not yet recorded).
func TestPruneUpTo(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	b, err := store.Open(ctx, root, store.Config{})
	if err != nil {
		t.Fatal(err)
	}
	for seq, nimg := range map[int64]int64{1: 4000, 2: 8000, 3: 12000, 4: 16000} {
		m := manifest(t)
		m.Seq, m.Nimg = seq, nimg
		if err := Save(ctx, b, DirName("run", nimg), m, state()); err != nil {
			t.Fatal(err)
		}
	}
	for _, nimg := range []int64{6000, 14000} {
		if _, err := SaveObjects(ctx, b, DirName("run", nimg), manifest(t), state()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := PruneUpTo(ctx, b, "run", DirName("run", 14000), 1, 0); !errors.Is(err, ErrIncomplete) {
		t.Errorf("PruneUpTo bounded by a directory without a manifest: %v", err)
	}
	if _, err := PruneUpTo(ctx, b, "run", DirName("run", 99000), 1, 0); err == nil || !strings.Contains(err.Error(), "not a checkpoint directory") {
		t.Errorf("PruneUpTo bounded by a missing directory: %v", err)
	}
	removed, err := PruneUpTo(ctx, b, "run", DirName("run", 12000), 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{DirName("run", 4000), DirName("run", 6000), DirName("run", 8000)}
	if !reflect.DeepEqual(removed, want) {
		t.Errorf("PruneUpTo removed %v, want %v", removed, want)
	}
	es, _ := List(ctx, b, "run")
	var left []int64
	for _, e := range es {
		left = append(left, e.Nimg)
	}
	if !reflect.DeepEqual(left, []int64{12000, 14000, 16000}) {
		t.Errorf("left after PruneUpTo: %v", left)
	}
	// On a directory store the pruned directories go too, not only their files.
	for _, d := range want {
		if _, err := os.Stat(filepath.Join(root, filepath.FromSlash(d))); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("pruned %s: directory still there (%v)", d, err)
		}
	}
	if _, err := os.Stat(filepath.Join(root, filepath.FromSlash(DirName("run", 12000)))); err != nil {
		t.Errorf("kept %s: %v", DirName("run", 12000), err)
	}
}
