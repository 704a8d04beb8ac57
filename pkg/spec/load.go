package spec

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"reflect"
	"sort"
	"strings"

	"github.com/spf13/pflag"
	yaml3 "go.yaml.in/yaml/v3"
	"sigs.k8s.io/yaml"
)

// Decode reads a YAML (or JSON) job file over s. Fields the file does not name keep their
// values in s; dicts and lists the file names are replaced as a whole. Unknown fields,
// duplicate keys and values of the wrong type are errors naming the field and source (the
// file name, for messages). An empty file, a second YAML document and a NaN or infinite number
// are errors too. s is not validated.
func Decode(data []byte, source string, s *Spec) error {
	if err := checkDocument(data, source); err != nil {
		return err
	}
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return fmt.Errorf("spec: %s: %s", source, oneLine(err.Error()))
	}
	if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
		return fmt.Errorf("spec: %s: the job file holds no fields (empty or null); name a preset or fields", source)
	}
	var generic any
	if err := json.Unmarshal(js, &generic); err != nil {
		return fmt.Errorf("spec: %s: %v", source, err)
	}
	top, ok := generic.(map[string]any)
	if !ok {
		return fmt.Errorf("spec: %s: the top level must be a mapping of fields, not %s", source, jsonKind(generic))
	}
	if err := checkKnown(top, reflect.TypeOf(Spec{}), ""); err != nil {
		return fmt.Errorf("spec: %s: %w", source, err)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(s); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			if f, ok := FieldByPath(te.Field); ok && strings.HasSuffix(f.Kind, "dict") && te.Value != "array" {
				return fmt.Errorf("spec: %s: field %s: got %s, want resolution: value pairs such as {4: 512}",
					source, te.Field, article(te.Value))
			}
			return fmt.Errorf("spec: %s: field %s: got %s, want %s", source, te.Field, article(te.Value), kindWord(te.Type))
		}
		return fmt.Errorf("spec: %s: %v", source, err)
	}
	return nil
}

// checkDocument refuses what the JSON conversion would lose or misreport: a file with no
// document, a second document (which would be ignored) and .nan/.inf numbers (which JSON cannot
// carry), naming the line and the field. Syntax errors are left to the strict parser.
func checkDocument(data []byte, source string) error {
	dec := yaml3.NewDecoder(bytes.NewReader(data))
	var doc yaml3.Node
	switch err := dec.Decode(&doc); {
	case errors.Is(err, io.EOF):
		return fmt.Errorf("spec: %s: the job file holds no fields (empty or only comments); name a preset or fields", source)
	case err != nil:
		return nil
	}
	var next yaml3.Node
	if err := dec.Decode(&next); !errors.Is(err, io.EOF) {
		where := ""
		if err == nil && next.Line > 0 {
			where = fmt.Sprintf(" at line %d", next.Line)
		}
		return fmt.Errorf("spec: %s: a second YAML document%s; a job file holds one (remove the extra ---)", source, where)
	}
	return nonFinite(&doc, "", source)
}

// nonFinite reports the first float scalar under n that is NaN or infinite.
func nonFinite(n *yaml3.Node, path, source string) error {
	switch n.Kind {
	case yaml3.DocumentNode, yaml3.SequenceNode:
		for _, c := range n.Content {
			if err := nonFinite(c, path, source); err != nil {
				return err
			}
		}
	case yaml3.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			p := n.Content[i].Value
			if path != "" {
				p = path + "." + p
			}
			if err := nonFinite(n.Content[i+1], p, source); err != nil {
				return err
			}
		}
	case yaml3.ScalarNode:
		var f float64
		if n.ShortTag() == "!!float" && n.Decode(&f) == nil && (math.IsNaN(f) || math.IsInf(f, 0)) {
			return fmt.Errorf("spec: %s: line %d: field %s = %s: numbers must be finite", source, n.Line, path, n.Value)
		}
	}
	// An alias is not followed: its anchor was checked where it is defined (and following
	// nested aliases could take exponential time).
	return nil
}

// checkKnown reports the first key of m (sorted) that is not a field of t, with its full path
// and the closest known name.
func checkKnown(m map[string]any, t reflect.Type, prefix string) error {
	known := map[string]reflect.StructField{}
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		name, _, _ := strings.Cut(sf.Tag.Get("json"), ",")
		if name != "" && name != "-" {
			known[name] = sf
		}
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		path := k
		if prefix != "" {
			path = prefix + "." + k
		}
		sf, ok := known[k]
		if !ok {
			msg := "unknown field " + path
			if s := closest(k, known); s != "" {
				if prefix != "" {
					s = prefix + "." + s
				}
				msg += " (did you mean " + s + "?)"
			}
			return errors.New(msg)
		}
		if sf.Type.Kind() == reflect.Struct {
			switch sub := m[k].(type) {
			case map[string]any:
				if err := checkKnown(sub, sf.Type, path); err != nil {
					return err
				}
			case nil:
			default:
				return fmt.Errorf("field %s: got a %s, want a mapping of fields", path, jsonKind(m[k]))
			}
		}
	}
	return nil
}

// closest returns the known name nearest to k by edit distance, if it is near enough to be a
// typo.
func closest(k string, known map[string]reflect.StructField) string {
	best, bestD := "", 4
	for name := range known {
		if d := editDistance(k, name); d < bestD || (d == bestD && name < best) {
			best, bestD = name, d
		}
	}
	if bestD > len(k)/2+1 {
		return ""
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func jsonKind(v any) string {
	switch v.(type) {
	case map[string]any:
		return "mapping"
	case []any:
		return "list"
	case string:
		return "string"
	case float64:
		return "number"
	case bool:
		return "boolean"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
}

func kindWord(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int64:
		return "an integer"
	case reflect.Float64:
		return "a number"
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Map:
		return "a mapping of resolution: value"
	case reflect.Slice:
		return "a list of numbers"
	case reflect.Struct:
		return "a mapping of fields"
	}
	return t.String()
}

func article(what string) string {
	if what == "array" {
		return "a list"
	}
	if what != "" && strings.ContainsRune("aeiou", rune(what[0])) {
		return "an " + what
	}
	return "a " + what
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// peekPreset returns the preset a job file names, if any.
func peekPreset(data []byte, source string) (string, error) {
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return "", fmt.Errorf("spec: %s: %s", source, oneLine(err.Error()))
	}
	var top map[string]any
	if json.Unmarshal(js, &top) != nil {
		return "", nil // Decode reports the shape error
	}
	switch p := top["preset"].(type) {
	case string:
		return p, nil
	case nil:
		return "", nil
	default:
		return "", fmt.Errorf("spec: %s: field preset: got a %s, want a string", source, jsonKind(p))
	}
}

// LoadFile builds the spec of a job file: the preset the file names (or the defaults), then
// the file, then validation.
func LoadFile(path string) (*Spec, error) {
	return load(path, "", false, nil)
}

func load(path, flagPreset string, presetFromFlag bool, apply func(*Spec) error) (*Spec, error) {
	var data []byte
	name := flagPreset
	if path != "" {
		var err error
		data, err = os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("spec: read job file: %w", err)
		}
		if err := checkDocument(data, path); err != nil {
			return nil, err
		}
		if !presetFromFlag {
			if name, err = peekPreset(data, path); err != nil {
				return nil, err
			}
		}
	}
	s, err := Preset(name)
	if err != nil {
		if path != "" && !presetFromFlag {
			return nil, fmt.Errorf("spec: %s: preset %q is unknown; known: %s", path, name, strings.Join(PresetNames(), ", "))
		}
		return nil, err
	}
	if path != "" {
		if err := Decode(data, path, s); err != nil {
			return nil, err
		}
	}
	if apply != nil {
		if err := apply(s); err != nil {
			return nil, err
		}
	}
	s.Preset = name
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return s, nil
}

// YAML renders s as a job file that Decode reads back to the same spec.
func (s *Spec) YAML() ([]byte, error) {
	b, err := yaml.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("spec: encode: %w", err)
	}
	return b, nil
}

// Flags binds every spec field to a command-line flag of a FlagSet.
type Flags struct {
	fs     *pflag.FlagSet
	preset string
}

// flagValue holds the text of one spec flag; it is parsed into the spec by Apply. Set checks
// the text parses so that a bad flag fails at parse time.
type flagValue struct {
	f    Field
	text string
}

func (v *flagValue) String() string { return v.text }
func (v *flagValue) Type() string   { return v.f.Kind }
func (v *flagValue) Set(text string) error {
	if _, err := v.f.parse(text); err != nil {
		return err
	}
	v.text = text
	return nil
}

// RegisterFlags adds one flag per spec field to fs (named after the field's path, kebab-case,
// e.g. --schedule-lod-training-kimg, --dataset-uri, --seed) and --preset. Flags show the
// defaults; only flags set on the command line override the file and preset (see Load).
func RegisterFlags(fs *pflag.FlagSet) *Flags {
	fl := &Flags{fs: fs}
	d := Defaults()
	fs.StringVar(&fl.preset, "preset", "", "spec preset to start from: "+strings.Join(PresetNames(), ", ")+
		" (the flag defaults shown are SG's; a preset or job file changes them)")
	for _, f := range fields {
		if f.Path == "preset" {
			continue
		}
		v := &flagValue{f: f, text: f.Get(d)}
		help := f.Help
		if f.Kind == "int-dict" || f.Kind == "float-dict" {
			help += " (resolution=value,...)"
		}
		flag := fs.VarPF(v, f.Flag, "", help)
		if f.Kind == "bool" {
			flag.NoOptDefVal = "true"
		}
	}
	return fl
}

// Apply sets the fields of s whose flags were given on the command line.
func (fl *Flags) Apply(s *Spec) error {
	for _, f := range fields {
		pf := fl.fs.Lookup(f.Flag)
		if pf == nil || !pf.Changed || f.Path == "preset" {
			continue
		}
		if err := f.Set(s, pf.Value.String()); err != nil {
			return fmt.Errorf("%w (flag --%s)", err, f.Flag)
		}
	}
	return nil
}

// Load builds the job's spec with precedence flags > file > preset > defaults and validates
// it. path is the job file ("" for none). The preset is --preset when given, else the file's
// preset field.
func (fl *Flags) Load(path string) (*Spec, error) {
	pf := fl.fs.Lookup("preset")
	return load(path, fl.preset, pf != nil && pf.Changed, fl.Apply)
}
