package train

import (
	"encoding/binary"
	"encoding/json"
	"fmt"

	"github.com/gantry-ml/gantry/kernels"
	"github.com/gantry-ml/gantry/pkg/checkpoint"
	"github.com/gantry-ml/gantry/pkg/model"
	"github.com/gantry-ml/gantry/pkg/safetensors"
	"github.com/gantry-ml/gantry/pkg/schedule"
	"github.com/gantry-ml/gantry/pkg/spec"
)

// Checkpoint object names.
const (
	ObjG    = "G"
	ObjD    = "D"
	ObjGs   = "Gs"
	ObjOptG = "opt_G"
	ObjOptD = "opt_D"
	ObjWAvg = "w_avg"
)

// OptionsFromSpec derives a worker's trainer options from a job spec.
func OptionsFromSpec(s *spec.Spec, rank, world int) (Options, error) {
	sched, err := schedule.New(s.Schedule, s.Dataset.Resolution)
	if err != nil {
		return Options{}, err
	}
	m := s.Model
	return Options{
		Model: model.Config{
			Resolution: s.Dataset.Resolution, Channels: s.Dataset.Channels,
			ZDim: m.ZDim, WDim: m.WDim, MappingLayers: m.MappingLayers, MappingLRMul: m.MappingLRMul,
			FmapBase: m.FmapBase, FmapDecay: m.FmapDecay, FmapMax: m.FmapMax,
			MbstdGroup: m.MbstdGroupSize, MbstdFeatures: m.MbstdFeatures,
			FusedScaleMin: m.FusedScaleMinResolution, UseNoise: m.UseNoise, Blur: m.BlurFilter,
		},
		Schedule:    sched,
		R1Gamma:     s.Loss.R1Gamma,
		R1Interval:  s.Loss.R1Interval,
		StyleMixing: m.StyleMixingProb,
		WAvgBeta:    m.WAvgBeta,
		EMAHalfLife: s.EMA.HalfLifeKimg,
		Beta1:       s.Adam.Beta1,
		Beta2:       s.Adam.Beta2,
		Epsilon:     s.Adam.Epsilon,
		ResetAdam:   s.Adam.ResetOnLODChange,
		Sanitize:    s.Loss.NonFinite == spec.NonFiniteSanitize,
		Seed:        uint64(s.Seed),
		Rank:        rank,
		World:       world,
	}, nil
}

// paramObject reads a parameter set (or a buffer laid out like it) into a checkpoint object.
func paramObject(name string, ps *model.ParamSet, buf *kernels.Buffer) (checkpoint.Object, error) {
	host := make([]float32, ps.Len())
	if err := buf.Read(0, host); err != nil {
		return checkpoint.Object{}, fmt.Errorf("train: save %s: %w", name, err)
	}
	obj := checkpoint.Object{Name: name}
	off := 0
	for _, n := range ps.Names() {
		shape := ps.Shape(n)
		k := kernels.Numel(shape)
		obj.Tensors = append(obj.Tensors, safetensors.FromFloat32(n, shape, host[off:off+k]))
		off += k
	}
	return obj, nil
}

// Objects returns the trainer's state as checkpoint objects: G, D, Gs, both optimizers'
// moments and the w average.
func (t *Trainer) Objects() ([]checkpoint.Object, error) {
	var objs []checkpoint.Object
	add := func(name string, ps *model.ParamSet, bufs map[string]*kernels.Buffer) error {
		obj := checkpoint.Object{Name: name}
		for _, suffix := range []string{"", "m", "v"} {
			b, ok := bufs[suffix]
			if !ok {
				continue
			}
			o, err := paramObject(name, ps, b)
			if err != nil {
				return err
			}
			for _, tn := range o.Tensors {
				if suffix != "" {
					tn.Name = suffix + "." + tn.Name
				}
				obj.Tensors = append(obj.Tensors, tn)
			}
		}
		objs = append(objs, obj)
		return nil
	}
	steps := []struct {
		name string
		ps   *model.ParamSet
		bufs map[string]*kernels.Buffer
	}{
		{ObjG, t.G.Params, map[string]*kernels.Buffer{"": t.G.Params.Values}},
		{ObjD, t.D.Params, map[string]*kernels.Buffer{"": t.D.Params.Values}},
		{ObjGs, t.Gs.Params, map[string]*kernels.Buffer{"": t.Gs.Params.Values}},
		{ObjOptG, t.G.Params, map[string]*kernels.Buffer{"m": t.mG, "v": t.vG}},
		{ObjOptD, t.D.Params, map[string]*kernels.Buffer{"m": t.mD, "v": t.vD}},
	}
	for _, s := range steps {
		if err := add(s.name, s.ps, s.bufs); err != nil {
			return nil, err
		}
	}
	wd := t.opts.Model.WDim
	w := make([]float32, wd)
	if err := t.WAvg.Read(0, w); err != nil {
		return nil, err
	}
	objs = append(objs, checkpoint.Object{Name: ObjWAvg, Tensors: []safetensors.Tensor{safetensors.FromFloat32("w_avg", []int{wd}, w)}})
	return objs, nil
}

// Manifest returns a checkpoint manifest for the trainer's position; the caller adds the
// tick, sequence number and loader cursors.
func (t *Trainer) Manifest(s *spec.Spec) (*checkpoint.Manifest, error) {
	counters, err := json.Marshal(t.C)
	if err != nil {
		return nil, err
	}
	seed := make([]byte, 8)
	binary.LittleEndian.PutUint64(seed, t.opts.Seed)
	return &checkpoint.Manifest{
		Spec:      s,
		Nimg:      t.C.Images,
		Kimg:      t.Kimg(),
		LOD:       t.State().LOD,
		Step:      t.C.Step,
		WorldSize: t.opts.World,
		// The generators are counter-based: their state is the seed and the step.
		RNG: map[string][]byte{"philox_seed": seed},
		Optimizers: map[string]checkpoint.Optimizer{
			"G": {Object: ObjOptG, Step: t.C.AdamStepG},
			"D": {Object: ObjOptD, Step: t.C.AdamStepD},
		},
		EMA: ObjGs,
		Counters: map[string]int64{
			"skipped_g": t.C.SkippedG, "skipped_d": t.C.SkippedD,
			"nonfinite": t.C.NonFinite, "adam_resets": t.C.ResetCount,
		},
		Extra: map[string]json.RawMessage{"train_counters": counters},
	}, nil
}

// Restore loads a checkpoint's parameters, optimizer state, w average and counters.
func (t *Trainer) Restore(c *checkpoint.Checkpoint) error {
	m := c.Manifest
	if raw, ok := m.Extra["train_counters"]; ok {
		var cs Counters
		if err := json.Unmarshal(raw, &cs); err != nil {
			return fmt.Errorf("train: restore %s: counters: %w", c.Dir, err)
		}
		t.C = cs
	} else {
		t.C = Counters{Images: m.Nimg, Step: m.Step, AdamStepG: m.Optimizers["G"].Step, AdamStepD: m.Optimizers["D"].Step}
	}
	if seed := m.RNG["philox_seed"]; len(seed) == 8 && binary.LittleEndian.Uint64(seed) != t.opts.Seed {
		return fmt.Errorf("train: restore %s: checkpoint seed %d differs from the job's %d", c.Dir, binary.LittleEndian.Uint64(seed), t.opts.Seed)
	}
	loads := []struct {
		obj, prefix string
		ps          *model.ParamSet
		buf         *kernels.Buffer
	}{
		{ObjG, "", t.G.Params, t.G.Params.Values},
		{ObjD, "", t.D.Params, t.D.Params.Values},
		{ObjGs, "", t.Gs.Params, t.Gs.Params.Values},
		{ObjOptG, "m.", t.G.Params, t.mG},
		{ObjOptG, "v.", t.G.Params, t.vG},
		{ObjOptD, "m.", t.D.Params, t.mD},
		{ObjOptD, "v.", t.D.Params, t.vD},
	}
	for _, l := range loads {
		host := make([]float32, 0, l.ps.Len())
		for _, n := range l.ps.Names() {
			v, err := c.Float32(l.obj, l.prefix+n, l.ps.Shape(n))
			if err != nil {
				return err
			}
			host = append(host, v...)
		}
		if err := l.buf.Write(0, host); err != nil {
			return fmt.Errorf("train: restore %s: %w", l.obj, err)
		}
	}
	w, err := c.Float32(ObjWAvg, "w_avg", []int{t.opts.Model.WDim})
	if err != nil {
		return err
	}
	return t.WAvg.Write(0, w)
}
