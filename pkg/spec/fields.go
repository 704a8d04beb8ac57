package spec

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"github.com/gantry-ml/gantry/pkg/schedule"
)

// Field describes one leaf field of the spec.
type Field struct {
	Path string // dotted JSON path: "schedule.lod_training_kimg"
	Flag string // flag name: "schedule-lod-training-kimg"
	Help string // one-line description
	Arch bool   // must match between a checkpoint and the job resuming it
	Kind string // int, float, string, bool, floats, int-dict, float-dict

	index []int // reflect field index path from Spec
}

var (
	intDictType   = reflect.TypeOf(schedule.IntDict{})
	floatDictType = reflect.TypeOf(schedule.FloatDict{})
	floatsType    = reflect.TypeOf([]float64{})
)

// archFields are the fields that fix the shapes and meaning of the saved tensors and of the
// schedule position; a checkpoint can only be resumed by a spec that agrees on all of them.
// Everything else (total kimg, learning rates, snapshot intervals, workers, device, ...) may
// change between runs.
var archFields = map[string]bool{
	"dataset.resolution":               true,
	"dataset.channels":                 true,
	"model.z_dim":                      true,
	"model.w_dim":                      true,
	"model.mapping_layers":             true,
	"model.mapping_lrmul":              true,
	"model.fmap_base":                  true,
	"model.fmap_decay":                 true,
	"model.fmap_max":                   true,
	"model.use_noise":                  true,
	"model.blur_filter":                true,
	"model.fused_scale_min_resolution": true,
	"model.mbstd_group_size":           true,
	"model.mbstd_features":             true,
	"schedule.initial_resolution":      true,
	"schedule.lod_training_kimg":       true,
	"schedule.lod_transition_kimg":     true,
	"schedule.fixed_resolution":        true,
}

// fields is the flattened spec, computed once.
var fields = walk(reflect.TypeOf(Spec{}), "", nil)

// Fields lists every leaf field of the spec in declaration order.
func Fields() []Field { return append([]Field(nil), fields...) }

func walk(t reflect.Type, prefix string, index []int) []Field {
	var out []Field
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		name, _, _ := strings.Cut(sf.Tag.Get("json"), ",")
		if name == "" || name == "-" || !sf.IsExported() {
			continue
		}
		path := name
		if prefix != "" {
			path = prefix + "." + name
		}
		idx := append(append([]int(nil), index...), i)
		ft := sf.Type
		if ft.Kind() == reflect.Struct {
			out = append(out, walk(ft, path, idx)...)
			continue
		}
		f := Field{
			Path:  path,
			Flag:  strings.NewReplacer(".", "-", "_", "-").Replace(path),
			Help:  sf.Tag.Get("help"),
			Arch:  archFields[path],
			index: idx,
		}
		switch {
		case ft == intDictType:
			f.Kind = "int-dict"
		case ft == floatDictType:
			f.Kind = "float-dict"
		case ft == floatsType:
			f.Kind = "floats"
		case ft.Kind() == reflect.Int || ft.Kind() == reflect.Int64:
			f.Kind = "int"
		case ft.Kind() == reflect.Float64:
			f.Kind = "float"
		case ft.Kind() == reflect.String:
			f.Kind = "string"
		case ft.Kind() == reflect.Bool:
			f.Kind = "bool"
		default:
			panic(fmt.Sprintf("spec: field %s has unsupported type %s", path, ft))
		}
		out = append(out, f)
	}
	return out
}

// value returns the field's reflect.Value in s.
func (f Field) value(s *Spec) reflect.Value {
	return reflect.ValueOf(s).Elem().FieldByIndex(f.index)
}

// Get renders the field's value in s as text, the way its flag takes it.
func (f Field) Get(s *Spec) string {
	v := f.value(s)
	switch f.Kind {
	case "int-dict":
		return v.Interface().(schedule.IntDict).String()
	case "float-dict":
		return v.Interface().(schedule.FloatDict).String()
	case "floats":
		return floatsString(v.Interface().([]float64))
	case "int":
		return strconv.FormatInt(v.Int(), 10)
	case "float":
		return strconv.FormatFloat(v.Float(), 'g', -1, 64)
	case "bool":
		return strconv.FormatBool(v.Bool())
	default:
		return v.String()
	}
}

// Set parses text into the field of s. The error names the field.
func (f Field) Set(s *Spec, text string) error {
	nv, err := f.parse(text)
	if err != nil {
		return fmt.Errorf("spec: %s = %q: %v", f.Path, text, err)
	}
	f.value(s).Set(nv)
	return nil
}

func (f Field) parse(text string) (reflect.Value, error) {
	t := strings.TrimSpace(text)
	switch f.Kind {
	case "int-dict":
		d, err := schedule.ParseIntDict(t)
		return reflect.ValueOf(d), err
	case "float-dict":
		d, err := schedule.ParseFloatDict(t)
		return reflect.ValueOf(d), err
	case "floats":
		fs, err := parseFloats(t)
		return reflect.ValueOf(fs), err
	case "int":
		n, err := strconv.ParseInt(t, 10, 64)
		if err != nil {
			return reflect.Value{}, fmt.Errorf("not an integer")
		}
		v := reflect.New(reflect.TypeOf(Spec{}).FieldByIndex(f.index).Type).Elem()
		if v.OverflowInt(n) {
			return reflect.Value{}, fmt.Errorf("out of range")
		}
		v.SetInt(n)
		return v, nil
	case "float":
		x, err := strconv.ParseFloat(t, 64)
		if err != nil {
			return reflect.Value{}, fmt.Errorf("not a number")
		}
		return reflect.ValueOf(x), nil
	case "bool":
		b, err := strconv.ParseBool(t)
		if err != nil {
			return reflect.Value{}, fmt.Errorf("not true or false")
		}
		return reflect.ValueOf(b), nil
	default:
		return reflect.ValueOf(text), nil
	}
}

func floatsString(fs []float64) string {
	parts := make([]string, len(fs))
	for i, x := range fs {
		parts[i] = strconv.FormatFloat(x, 'g', -1, 64)
	}
	return strings.Join(parts, ",")
}

func parseFloats(s string) ([]float64, error) {
	s = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	if strings.TrimSpace(s) == "" {
		return []float64{}, nil
	}
	parts := strings.Split(s, ",")
	out := make([]float64, len(parts))
	for i, p := range parts {
		x, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil {
			return nil, fmt.Errorf("%q is not a number", p)
		}
		out[i] = x
	}
	return out, nil
}

// FieldByPath returns the field with the dotted path, or false.
func FieldByPath(path string) (Field, bool) {
	for _, f := range fields {
		if f.Path == path {
			return f, true
		}
	}
	return Field{}, false
}

// Difference is one field two specs disagree on.
type Difference struct {
	Field string // dotted path
	A, B  string // the two values as text
	Arch  bool   // an architecture field: a checkpoint cannot be resumed across it
}

func (d Difference) String() string {
	return fmt.Sprintf("%s (%s vs %s)", d.Field, show(d.A), show(d.B))
}

func show(s string) string {
	if s == "" {
		return `""`
	}
	return s
}

// Diff lists the fields whose values differ between a and b, in declaration order. The preset
// name is not compared (the values are).
func Diff(a, b *Spec) []Difference {
	var out []Difference
	for _, f := range fields {
		if f.Path == "preset" {
			continue
		}
		va, vb := f.Get(a), f.Get(b)
		if va != vb {
			out = append(out, Difference{Field: f.Path, A: va, B: vb, Arch: f.Arch})
		}
	}
	return out
}

// CheckResume returns an error naming every architecture field on which the spec saved in a
// checkpoint and the spec of the job resuming it differ, or nil when the checkpoint can be
// resumed.
func CheckResume(saved, job *Spec) error {
	var bad []string
	for _, d := range Diff(saved, job) {
		if d.Arch {
			bad = append(bad, fmt.Sprintf("%s (checkpoint %s, job %s)", d.Field, show(d.A), show(d.B)))
		}
	}
	if len(bad) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrIncompatible, strings.Join(bad, ", "))
}
