package store_test

import (
	"context"
	"testing"

	"github.com/gantry-ml/gantry/pkg/store"
	"github.com/gantry-ml/gantry/pkg/store/storetest"
)

func TestDirConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := store.Open(context.Background(), t.TempDir(), store.Config{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestFileURIConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := store.Open(context.Background(), "file://"+t.TempDir()+"/sub/dir", store.Config{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestS3Conformance(t *testing.T) {
	m := storetest.StartMinIO(t)
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := store.Open(context.Background(), m.Bucket(t)+"/some/prefix", m.Config())
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}
