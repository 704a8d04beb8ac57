package dataset

import (
	"context"
	"image/color"
	"strings"
	"testing"

	"github.com/gantry-ml/gantry/pkg/store"
)

// TestCreateKeepsForeignFiles: an import into a directory that already holds other files under
// shards/ and partial/ deletes only its own leftovers (it deleted every file there).
func TestCreateKeepsForeignFiles(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	writeFile(t, dir+"/a.png", pngBytes(t, solid(4, 4, color.Gray{1}, "gray")))
	st := dirStore(t)
	put := func(key, v string) {
		if err := st.Put(ctx, key, strings.NewReader(v), int64(len(v))); err != nil {
			t.Fatal(err)
		}
	}
	put("shards/notes.txt", "precious")
	put("partial/keep.json", "{}")
	put("shards/000007.bin", "a leftover shard of an earlier import")
	if _, _, err := create(t, st, Options{Source: dir, Resolution: 4}); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"shards/notes.txt", "partial/keep.json"} {
		if _, err := st.Stat(ctx, key); err != nil {
			t.Errorf("%s was deleted: %v", key, err)
		}
	}
	if _, err := st.Stat(ctx, "shards/000007.bin"); err == nil {
		t.Error("the leftover shards/000007.bin was kept")
	} else if !strings.Contains(err.Error(), store.ErrNotFound.Error()) {
		t.Errorf("stat shards/000007.bin: %v", err)
	}
}
