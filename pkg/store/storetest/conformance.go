package storetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/gantry-ml/gantry/pkg/store"
)

// Run is the conformance suite: every backend must pass it. open returns an empty store.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()

	t.Run("RoundTrip", func(t *testing.T) {
		s := open(t)
		sizes := []int{0, 1 << 10, 64 << 20}
		for _, n := range sizes {
			if n > 1<<20 && testing.Short() {
				continue
			}
			data := Bytes(n, uint64(n))
			key := fmt.Sprintf("sizes/obj-%d", n)
			if err := s.Put(ctx, key, bytes.NewReader(data), int64(n)); err != nil {
				t.Fatalf("put %d B: %v", n, err)
			}
			got, err := store.ReadAll(ctx, s, key)
			if err != nil {
				t.Fatalf("get %d B: %v", n, err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("get %d B: content differs (got %d B, sha256 %x, want %x)", n, len(got), sha256.Sum256(got), sha256.Sum256(data))
			}
			info, err := s.Stat(ctx, key)
			if err != nil || info.Size != int64(n) || info.Key != key {
				t.Fatalf("stat %d B: %+v, %v", n, info, err)
			}
		}
		// Unknown size streams.
		data := Bytes(3<<20+17, 7)
		if err := s.Put(ctx, "sizes/unknown", io.MultiReader(bytes.NewReader(data)), -1); err != nil {
			t.Fatalf("put unknown size: %v", err)
		}
		if got, err := store.ReadAll(ctx, s, "sizes/unknown"); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("get unknown size: %d B, %v", len(got), err)
		}
		// Overwrite replaces.
		if err := s.Put(ctx, "sizes/unknown", bytes.NewReader([]byte("new")), 3); err != nil {
			t.Fatal(err)
		}
		if got, _ := store.ReadAll(ctx, s, "sizes/unknown"); string(got) != "new" {
			t.Fatalf("overwrite: got %q", got)
		}
	})

	t.Run("List", func(t *testing.T) {
		s := open(t)
		keys := []string{"a/1", "a/2", "a/b/3", "ab", "b/1"}
		for i := len(keys) - 1; i >= 0; i-- {
			if err := s.Put(ctx, keys[i], bytes.NewReader([]byte(keys[i])), int64(len(keys[i]))); err != nil {
				t.Fatal(err)
			}
		}
		for _, tc := range []struct {
			prefix string
			want   []string
		}{
			{"", keys},
			{"a/", []string{"a/1", "a/2", "a/b/3"}},
			{"a", []string{"a/1", "a/2", "a/b/3", "ab"}},
			{"a/b/", []string{"a/b/3"}},
			{"c/", nil},
		} {
			got, err := s.List(ctx, tc.prefix)
			if err != nil {
				t.Fatalf("list %q: %v", tc.prefix, err)
			}
			var names []string
			for _, in := range got {
				names = append(names, in.Key)
				if in.Size != int64(len(in.Key)) {
					t.Errorf("list %q: %s has size %d", tc.prefix, in.Key, in.Size)
				}
			}
			if fmt.Sprint(names) != fmt.Sprint(tc.want) {
				t.Errorf("list %q = %v, want %v", tc.prefix, names, tc.want)
			}
		}
	})

	t.Run("MissingAndDelete", func(t *testing.T) {
		s := open(t)
		if _, err := s.Get(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("get missing: %v, want ErrNotFound", err)
		}
		if _, err := s.Stat(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("stat missing: %v, want ErrNotFound", err)
		}
		if err := s.Delete(ctx, "nope"); err != nil {
			t.Errorf("delete missing: %v", err)
		}
		if err := s.Put(ctx, "x", bytes.NewReader([]byte("x")), 1); err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(ctx, "x"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Stat(ctx, "x"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("stat deleted: %v, want ErrNotFound", err)
		}
	})

	t.Run("PutIfAbsent", func(t *testing.T) {
		s := open(t)
		if err := s.PutIfAbsent(ctx, "commit", bytes.NewReader([]byte("one")), 3); err != nil {
			t.Fatalf("first create: %v", err)
		}
		err := s.PutIfAbsent(ctx, "commit", bytes.NewReader([]byte("two")), 3)
		if !errors.Is(err, store.ErrExists) {
			t.Fatalf("second create: %v, want ErrExists", err)
		}
		if got, _ := store.ReadAll(ctx, s, "commit"); string(got) != "one" {
			t.Fatalf("after refused create: %q, want \"one\"", got)
		}
		// Racing creators: exactly one wins.
		var wg sync.WaitGroup
		wins := make(chan int, 8)
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				b := []byte(fmt.Sprint(i))
				if err := s.PutIfAbsent(ctx, "race", bytes.NewReader(b), int64(len(b))); err == nil {
					wins <- i
				} else if !errors.Is(err, store.ErrExists) {
					t.Errorf("racer %d: %v", i, err)
				}
			}()
		}
		wg.Wait()
		close(wins)
		if n := len(wins); n != 1 {
			t.Fatalf("%d racers created the object, want 1", n)
		}
	})

	t.Run("InvalidKeys", func(t *testing.T) {
		s := open(t)
		for _, k := range []string{"", "/abs", "../up", "a/../../b", "a//b", "./a", "a/", `a\b`} {
			if err := s.Put(ctx, k, bytes.NewReader(nil), 0); !errors.Is(err, store.ErrInvalidKey) {
				t.Errorf("put %q: %v, want ErrInvalidKey", k, err)
			}
			if _, err := s.Get(ctx, k); !errors.Is(err, store.ErrInvalidKey) {
				t.Errorf("get %q: %v, want ErrInvalidKey", k, err)
			}
		}
	})

	t.Run("FailedUploadLeavesNothing", func(t *testing.T) {
		s := open(t)
		boom := errors.New("source broke")
		for _, size := range []int64{-1, 20 << 20} {
			r := io.MultiReader(bytes.NewReader(Bytes(6<<20, 1)), errReader{boom})
			err := s.Put(ctx, "broken", r, size)
			if err == nil {
				t.Fatalf("size %d: put from a failing reader succeeded", size)
			}
			if _, err := s.Stat(ctx, "broken"); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("size %d: after failed put, stat = %v, want ErrNotFound", size, err)
			}
		}
		// A short reader (fewer bytes than promised) fails too.
		if err := s.Put(ctx, "short", bytes.NewReader([]byte("abc")), 10); err == nil {
			t.Fatal("put of 3 bytes promised as 10 succeeded")
		}
		if _, err := s.Stat(ctx, "short"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("after short put, stat = %v, want ErrNotFound", err)
		}
		if l, _ := s.List(ctx, ""); len(l) != 0 {
			t.Fatalf("after failed puts, list = %v, want empty", l)
		}
		if _, err := s.Cleanup(ctx, "", 0); err != nil {
			t.Fatalf("cleanup: %v", err)
		}
	})

	t.Run("Cancel", func(t *testing.T) {
		s := open(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := s.Put(cctx, "c", bytes.NewReader(Bytes(1<<20, 2)), 1<<20); !errors.Is(err, context.Canceled) {
			t.Errorf("put with cancelled context: %v, want context.Canceled", err)
		}
		if _, err := s.Stat(ctx, "c"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("after cancelled put, stat = %v", err)
		}
		// Cancelling mid-stream stops the upload.
		cctx, cancel = context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		slow := &slowReader{r: bytes.NewReader(Bytes(8<<20, 3)), delay: 50 * time.Millisecond}
		if err := s.Put(cctx, "c", slow, -1); err == nil {
			t.Errorf("put past its deadline succeeded")
		}
		if _, err := s.Stat(ctx, "c"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("after cancelled put, stat = %v", err)
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		s := open(t)
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				data := Bytes(64<<10+i, uint64(i))
				key := fmt.Sprintf("c/%d", i)
				if err := s.Put(ctx, key, bytes.NewReader(data), int64(len(data))); err != nil {
					t.Errorf("put %s: %v", key, err)
					return
				}
				if got, err := store.ReadAll(ctx, s, key); err != nil || !bytes.Equal(got, data) {
					t.Errorf("get %s: %d B, %v", key, len(got), err)
				}
			}()
		}
		wg.Wait()
		if l, err := s.List(ctx, "c/"); err != nil || len(l) != 8 {
			t.Fatalf("list after concurrent puts: %d objects, %v", len(l), err)
		}
	})
}

// Bytes returns n pseudo-random bytes determined by seed.
func Bytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// slowReader yields 64 KiB per read with a pause before each.
type slowReader struct {
	r     io.Reader
	delay time.Duration
}

func (s *slowReader) Read(p []byte) (int, error) {
	time.Sleep(s.delay)
	if len(p) > 64<<10 {
		p = p[:64<<10]
	}
	return s.r.Read(p)
}
