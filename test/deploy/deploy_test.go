package deploy_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/pflag"
	yaml "go.yaml.in/yaml/v3"

	"github.com/gantry-ml/gantry/pkg/spec"
	"github.com/gantry-ml/gantry/pkg/store/storetest"
)

// binDir holds the coordinator and worker binaries TestMain builds; root is the module root.
var binDir, root string

func TestMain(m *testing.M) {
	os.Exit(setup(m))
}

func setup(m *testing.M) int {
	var err error
	if root, err = storetest.ModuleRoot(); err != nil {
		fmt.Fprintln(os.Stderr, "deploy:", err)
		return 1
	}
	tmp, err := os.MkdirTemp("", "gantry-deploy-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "deploy:", err)
		return 1
	}
	defer os.RemoveAll(tmp)
	binDir = tmp
	build := exec.Command("go", "build", "-o", binDir+string(filepath.Separator), "./coordinator", "./worker")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "deploy: go build ./coordinator ./worker: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// commandHelp is what one subcommand's --help says.
type commandHelp struct {
	flags    map[string]string // flag name -> value type ("" for a bool flag, which takes none)
	required []string          // the flags the Usage line names before [flags]
	text     string
}

var (
	helpMu    sync.Mutex
	helpCache = map[string]*commandHelp{}
	// A flag line of cobra's help: "  -h, --help   help", "      --etcd string   etcd ...".
	flagLine = regexp.MustCompile(`(?m)^\s+(?:-[A-Za-z], )?--([a-z0-9][a-z0-9-]*)( [A-Za-z0-9-]+)?\s{2,}`)
	usageRE  = regexp.MustCompile(`(?m)^Usage:\n\s+(.*)$`)
	longFlag = regexp.MustCompile(`--([a-z0-9][a-z0-9-]*)`)
)

// helpOf runs `bin sub --help` from binDir and parses its flags.
func helpOf(bin, sub string) (*commandHelp, error) {
	helpMu.Lock()
	defer helpMu.Unlock()
	key := bin + " " + sub
	if h, ok := helpCache[key]; ok {
		return h, nil
	}
	if bin != "coordinator" && bin != "worker" {
		return nil, fmt.Errorf("runs %q: the deploy files may only run coordinator or worker", bin)
	}
	out, err := exec.Command(filepath.Join(binDir, bin), sub, "--help").CombinedOutput()
	if err != nil {
		if bytes.Contains(out, []byte("unknown command")) {
			return nil, fmt.Errorf("%s has no subcommand %q", bin, sub)
		}
		return nil, fmt.Errorf("%s %s --help: %v\n%s", bin, sub, err, out)
	}
	text := string(out)
	u := usageRE.FindStringSubmatch(text)
	if u == nil || !strings.HasPrefix(u[1], bin+" "+sub) {
		// cobra prints the parent's help for an unknown subcommand
		return nil, fmt.Errorf("%s has no subcommand %q", bin, sub)
	}
	h := &commandHelp{flags: map[string]string{}, text: text}
	for _, m := range flagLine.FindAllStringSubmatch(text, -1) {
		h.flags[m[1]] = strings.TrimSpace(m[2])
	}
	if len(h.flags) < 3 {
		return nil, fmt.Errorf("%s %s --help: found only %d flags; the help format changed?\n%s", bin, sub, len(h.flags), text)
	}
	usage, _, _ := strings.Cut(u[1], "[flags]")
	for _, m := range longFlag.FindAllStringSubmatch(usage, -1) {
		h.required = append(h.required, m[1])
	}
	helpCache[key] = h
	return h, nil
}

// invocation is one command line of the deploy files, checked against the binary's help.
type invocation struct {
	bin, sub string
	flags    map[string]string // flag name -> value ("true" for a bool given bare)
}

// checkArgv checks a command line (binary path first): a known subcommand, every flag in its
// --help with a value where it takes one, no positional arguments, and the flags the Usage
// line requires.
func checkArgv(argv []string) (*invocation, error) {
	if len(argv) < 2 {
		return nil, fmt.Errorf("command %q: want <coordinator|worker> <subcommand> flags...", argv)
	}
	inv := &invocation{bin: filepath.Base(argv[0]), sub: argv[1], flags: map[string]string{}}
	if strings.HasPrefix(inv.sub, "-") {
		return nil, fmt.Errorf("command %q: the subcommand must come first", argv)
	}
	h, err := helpOf(inv.bin, inv.sub)
	if err != nil {
		return nil, err
	}
	for i := 2; i < len(argv); i++ {
		tok := argv[i]
		if !strings.HasPrefix(tok, "--") {
			return nil, fmt.Errorf("%s %s: unexpected argument %q (only --flag[=value] is used here)", inv.bin, inv.sub, tok)
		}
		name, val, hasVal := strings.Cut(tok[2:], "=")
		typ, ok := h.flags[name]
		isBool := typ == ""
		if !ok {
			return nil, fmt.Errorf("%s %s has no flag --%s%s", inv.bin, inv.sub, name, suggest(name, h.flags))
		}
		switch {
		case hasVal && isBool && val != "true" && val != "false":
			return nil, fmt.Errorf("%s %s: --%s takes true or false, not %q", inv.bin, inv.sub, name, val)
		case !hasVal && isBool:
			val = "true"
		case !hasVal:
			if i+1 >= len(argv) || strings.HasPrefix(argv[i+1], "--") {
				return nil, fmt.Errorf("%s %s: --%s needs a value", inv.bin, inv.sub, name)
			}
			i++
			val = argv[i]
		}
		if err := checkValue(typ, val); err != nil {
			return nil, fmt.Errorf("%s %s: --%s %s: %v", inv.bin, inv.sub, name, val, err)
		}
		if _, dup := inv.flags[name]; dup {
			return nil, fmt.Errorf("%s %s: --%s given twice", inv.bin, inv.sub, name)
		}
		inv.flags[name] = val
	}
	for _, r := range h.required {
		if inv.flags[r] == "" {
			return nil, fmt.Errorf("%s %s: --%s is missing (its Usage line requires it)", inv.bin, inv.sub, r)
		}
	}
	return inv, nil
}

// suggest names the known flags sharing the longest prefix with name, for the error.
func suggest(name string, flags map[string]string) string {
	best, bestLen := "", 2
	for f := range flags {
		n := 0
		for n < len(f) && n < len(name) && f[n] == name[n] {
			n++
		}
		if n > bestLen || (n == bestLen && best != "" && f < best) {
			best, bestLen = f, n
		}
	}
	if best == "" {
		return ""
	}
	return " (did you mean --" + best + "?)"
}

// checkValue checks that a value parses as the flag's type, where the type is a plain one
// (the spec's dict and list flags are checked by loading the spec).
func checkValue(typ, val string) error {
	var err error
	switch typ {
	case "duration":
		_, err = time.ParseDuration(val)
		if err != nil {
			return errors.New("not a duration (such as 5s)")
		}
	case "int":
		_, err = strconv.Atoi(val)
		if err != nil {
			return errors.New("not an integer")
		}
	case "float":
		_, err = strconv.ParseFloat(val, 64)
		if err != nil {
			return errors.New("not a number")
		}
	}
	return nil
}

// TestCheckArgvRejects shows the checker fails on what a manifest could get wrong.
func TestCheckArgvRejects(t *testing.T) {
	ok := []string{"worker", "join", "--etcd=e:2379", "--nats", "nats://n:4222", "--store=s3://b/p", "--job=j", "--log-json"}
	if _, err := checkArgv(ok); err != nil {
		t.Fatalf("a good worker command line: %v", err)
	}
	for _, tc := range []struct {
		argv []string
		want string
	}{
		{append(ok[:len(ok):len(ok)], "--etdc=x"), "has no flag --etdc"},
		{append(ok[:len(ok):len(ok)], "--device=cuda"), "worker join has no flag --device"},
		{append(ok[:len(ok):len(ok)], "--threads"), "--threads needs a value"},
		{append(ok[:len(ok):len(ok)], "--log-json=yes"), "takes true or false"},
		{append(ok[:len(ok):len(ok)], "extra"), "unexpected argument"},
		{[]string{"worker", "join", "--etcd=e:2379", "--nats=n", "--store=s"}, "--job is missing"},
		{[]string{"worker", "joinn", "--etcd=e:2379"}, "no subcommand"},
		{[]string{"coordinator", "serve", "--job=j.yaml", "--etcd=e", "--nats=n", "--store=s", "--schedule-total-kimgs=1"}, "has no flag --schedule-total-kimgs"},
		{[]string{"trainer", "run"}, "may only run coordinator or worker"},
		{append(ok[:len(ok):len(ok)], "--ttl=3"), "--ttl 3: not a duration"},
		{append(ok[:len(ok):len(ok)], "--threads=eight"), "--threads eight: not an integer"},
	} {
		_, err := checkArgv(tc.argv)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got error %v, want one containing %q", tc.argv, err, tc.want)
		}
	}
}

// manifest is one YAML document of deploy/kubernetes.
type manifest struct {
	file string // relative to deploy/kubernetes
	doc  map[string]any
}

func (m manifest) kind() string { return str(m.doc["kind"]) }
func (m manifest) name() string { return str(get(m.doc, "metadata", "name")) }
func (m manifest) String() string {
	return fmt.Sprintf("%s: %s %s", m.file, m.kind(), m.name())
}

func str(v any) string { s, _ := v.(string); return s }

// get walks nested mappings.
func get(v any, path ...string) any {
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

func list(v any) []any { l, _ := v.([]any); return l }

// readManifests decodes every YAML document of every .yaml/.yml file under dir.
func readManifests(t *testing.T, dir string) []manifest {
	t.Helper()
	var out []manifest
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if ext := filepath.Ext(path); ext != ".yaml" && ext != ".yml" {
			return nil
		}
		rel, _ := filepath.Rel(dir, path)
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for n := 1; ; n++ {
			var doc map[string]any
			err := dec.Decode(&doc)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return fmt.Errorf("%s: document %d: %w", rel, n, err)
			}
			if doc == nil {
				continue
			}
			m := manifest{file: rel, doc: doc}
			if m.kind() == "" || str(doc["apiVersion"]) == "" || m.name() == "" {
				return fmt.Errorf("%s: document %d has no apiVersion, kind or metadata.name", rel, n)
			}
			out = append(out, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatalf("no manifests under %s", dir)
	}
	return out
}

// container is one container of a workload, with its command line checked.
type container struct {
	m    manifest
	name string
	c    map[string]any
	pod  map[string]any // the pod spec
	inv  *invocation
}

func (c container) String() string { return fmt.Sprintf("%s container %s", c.m, c.name) }

// podSpec returns the pod spec of a workload kind, or nil for other kinds.
func podSpec(m manifest) map[string]any {
	var p any
	switch m.kind() {
	case "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job":
		p = get(m.doc, "spec", "template", "spec")
	case "CronJob":
		p = get(m.doc, "spec", "jobTemplate", "spec", "template", "spec")
	case "Pod":
		p = get(m.doc, "spec")
	default:
		return nil
	}
	ps, _ := p.(map[string]any)
	return ps
}

func stringList(v any) ([]string, error) {
	var out []string
	for _, x := range list(v) {
		s, ok := x.(string)
		if !ok {
			return nil, fmt.Errorf("%v is not a string (quote it)", x)
		}
		out = append(out, s)
	}
	return out, nil
}

// k8sVarRef is a $(VAR) reference Kubernetes expands in command and args.
var k8sVarRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// containers checks and returns every container of every workload.
func containers(t *testing.T, ms []manifest, secrets map[string]map[string]string) []container {
	t.Helper()
	var out []container
	for _, m := range ms {
		ps := podSpec(m)
		if ps == nil {
			continue
		}
		cs := append(list(ps["initContainers"]), list(ps["containers"])...)
		if len(cs) == 0 {
			t.Errorf("%s: no containers", m)
		}
		for _, x := range cs {
			c, _ := x.(map[string]any)
			ct := container{m: m, name: str(c["name"]), c: c, pod: ps}
			cmd, err := stringList(c["command"])
			if err == nil {
				var args []string
				args, err = stringList(c["args"])
				cmd = append(cmd, args...)
			}
			if err != nil {
				t.Errorf("%s: %v", ct, err)
				continue
			}
			if len(cmd) == 0 {
				t.Errorf("%s: no command: name the binary and subcommand (the image has no entrypoint to rely on)", ct)
				continue
			}
			inv, err := checkArgv(cmd)
			if err != nil {
				t.Errorf("%s: %v", ct, err)
				continue
			}
			ct.inv = inv
			// every $(VAR) must be defined, or Kubernetes passes it literally
			defined := map[string]bool{}
			for _, e := range list(c["env"]) {
				defined[str(get(e, "name"))] = true
			}
			for _, e := range list(c["envFrom"]) {
				if n := str(get(e, "secretRef", "name")); n != "" {
					keys, ok := secrets[n]
					if !ok {
						t.Errorf("%s: envFrom names Secret %q, which deploy/kubernetes does not define", ct, n)
					}
					for k := range keys {
						defined[k] = true
					}
				}
			}
			for _, a := range cmd {
				for _, r := range k8sVarRef.FindAllStringSubmatch(a, -1) {
					if !defined[r[1]] {
						t.Errorf("%s: %q refers to $(%s), which the container's env does not define", ct, a, r[1])
					}
				}
			}
			out = append(out, ct)
		}
	}
	return out
}

// secretKeys returns each Secret's name and keys (data or stringData).
func secretKeys(ms []manifest) map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, m := range ms {
		if m.kind() != "Secret" {
			continue
		}
		keys := map[string]string{}
		for _, field := range []string{"data", "stringData"} {
			d, _ := m.doc[field].(map[string]any)
			for k, v := range d {
				keys[k] = fmt.Sprint(v)
			}
		}
		out[m.name()] = keys
	}
	return out
}

// checkEnvRead fails for each variable the help texts of the binaries do not name as "$VAR"
// (the S3 flags show the environment variables they fall back to).
func checkEnvRead(t *testing.T, where string, vars []string) {
	t.Helper()
	var helps []string
	for _, b := range [][2]string{{"coordinator", "serve"}, {"worker", "join"}} {
		h, err := helpOf(b[0], b[1])
		if err != nil {
			t.Fatal(err)
		}
		helps = append(helps, h.text)
	}
	for _, v := range vars {
		for i, text := range helps {
			if !regexp.MustCompile(`\$` + v + `\b`).MatchString(text) {
				t.Errorf("%s sets %s, which %s does not read (its --help names no $%s)", where, v,
					[]string{"coordinator serve", "worker join"}[i], v)
			}
		}
	}
}

// loadJob builds the spec a coordinator command line runs with, the way `coordinator serve`
// does: job file, then the spec flags on the command line.
func loadJob(inv *invocation, jobFile string) (*spec.Spec, error) {
	if _, err := spec.LoadFile(jobFile); err != nil {
		return nil, err
	}
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	fl := spec.RegisterFlags(fs)
	var args []string
	for name, v := range inv.flags {
		if fs.Lookup(name) != nil {
			args = append(args, "--"+name+"="+v)
		}
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return fl.Load(jobFile)
}

// jobFromConfigMap finds the ConfigMap key mounted at a coordinator's --job path and writes it
// to a file.
func jobFromConfigMap(t *testing.T, ct container, configMaps map[string]map[string]string) (string, error) {
	path := ct.inv.flags["job"]
	vols := map[string]map[string]any{}
	for _, v := range list(ct.pod["volumes"]) {
		vm, _ := v.(map[string]any)
		vols[str(vm["name"])] = vm
	}
	for _, vmount := range list(ct.c["volumeMounts"]) {
		mp := strings.TrimSuffix(str(get(vmount, "mountPath")), "/")
		if !strings.HasPrefix(path, mp+"/") {
			continue
		}
		rel := strings.TrimPrefix(path, mp+"/")
		cmRef := get(vols[str(get(vmount, "name"))], "configMap")
		if cmRef == nil {
			return "", fmt.Errorf("--job %s: the volume mounted at %s is not a ConfigMap", path, mp)
		}
		cmName := str(get(cmRef, "name"))
		data, ok := configMaps[cmName]
		if !ok {
			return "", fmt.Errorf("--job %s: ConfigMap %q is not in deploy/kubernetes", path, cmName)
		}
		key := rel
		if items := list(get(cmRef, "items")); items != nil {
			key = ""
			for _, it := range items {
				if str(get(it, "path")) == rel {
					key = str(get(it, "key"))
				}
			}
		}
		text, ok := data[key]
		if key == "" || !ok {
			return "", fmt.Errorf("--job %s: ConfigMap %q has no key for %s", path, cmName, rel)
		}
		f := filepath.Join(t.TempDir(), filepath.Base(rel))
		if err := os.WriteFile(f, []byte(text), 0o644); err != nil {
			return "", err
		}
		return f, nil
	}
	return "", fmt.Errorf("--job %s: no volume is mounted there", path)
}

// listensNowhere reports whether a command's help has no flag for an address to listen on;
// then an HTTP, TCP or gRPC probe has nothing to talk to.
func listensNowhere(bin, sub string) bool {
	h, err := helpOf(bin, sub)
	if err != nil {
		return false
	}
	for f := range h.flags {
		if strings.Contains(f, "listen") || strings.Contains(f, "addr") || strings.Contains(f, "port") || strings.Contains(f, "metrics") {
			return false
		}
	}
	return true
}

func TestKubernetes(t *testing.T) {
	ms := readManifests(t, filepath.Join(root, "deploy", "kubernetes"))
	var namespace string
	configMaps := map[string]map[string]string{}
	for _, m := range ms {
		switch m.kind() {
		case "Namespace":
			if namespace != "" {
				t.Errorf("%s: a second Namespace (%s already)", m, namespace)
			}
			namespace = m.name()
		case "ConfigMap":
			d := map[string]string{}
			data, _ := get(m.doc, "data").(map[string]any)
			for k, v := range data {
				d[k] = str(v)
			}
			configMaps[m.name()] = d
		}
	}
	if namespace == "" {
		t.Error("deploy/kubernetes defines no Namespace")
	}
	for _, m := range ms {
		if m.kind() != "Namespace" && str(get(m.doc, "metadata", "namespace")) != namespace {
			t.Errorf("%s: metadata.namespace is %q, want %q", m, get(m.doc, "metadata", "namespace"), namespace)
		}
	}
	services := map[string]bool{}
	for _, m := range ms {
		if m.kind() == "Service" {
			services[m.name()] = true
		}
	}
	for _, m := range ms {
		if podSpec(m) == nil || m.kind() == "Pod" {
			continue
		}
		// the API server refuses a selector that does not match the pod template's labels
		sel, _ := get(m.doc, "spec", "selector", "matchLabels").(map[string]any)
		labels, _ := get(m.doc, "spec", "template", "metadata", "labels").(map[string]any)
		if m.kind() != "Job" && m.kind() != "CronJob" && len(sel) == 0 {
			t.Errorf("%s: no spec.selector.matchLabels", m)
		}
		for k, v := range sel {
			if labels[k] != v {
				t.Errorf("%s: selector %s=%v does not match the pod template's labels %v", m, k, v, labels)
			}
		}
		if m.kind() == "StatefulSet" && !services[str(get(m.doc, "spec", "serviceName"))] {
			t.Errorf("%s: serviceName %q is not a Service in deploy/kubernetes", m, get(m.doc, "spec", "serviceName"))
		}
	}
	secrets := secretKeys(ms)
	if len(secrets) == 0 {
		t.Error("deploy/kubernetes defines no Secret for the S3 credentials")
	}
	for name, keys := range secrets {
		var vars []string
		for k := range keys {
			vars = append(vars, k)
		}
		sort.Strings(vars)
		checkEnvRead(t, "Secret "+name, vars)
		for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"} {
			if _, ok := keys[k]; !ok {
				t.Errorf("Secret %s has no %s", name, k)
			}
		}
	}

	cs := containers(t, ms, secrets)
	shared := map[string]map[string][]string{}  // flag -> value -> where
	devices := map[string]map[string][]string{} // directory -> device -> where
	gpuDirs := map[string]bool{}
	var coordinators, workers int
	jobNames := map[string]string{} // job name -> where (from the coordinators' specs)
	var workerJobs []container
	for _, ct := range cs {
		if ct.inv == nil {
			continue
		}
		for _, f := range []string{"etcd", "nats", "store"} {
			if v, ok := ct.inv.flags[f]; ok {
				if shared[f] == nil {
					shared[f] = map[string][]string{}
				}
				shared[f][v] = append(shared[f][v], ct.String())
			}
		}
		for _, kind := range []string{"livenessProbe", "readinessProbe", "startupProbe"} {
			p := get(ct.c, kind)
			if p == nil || !listensNowhere(ct.inv.bin, ct.inv.sub) {
				continue
			}
			for _, net := range []string{"httpGet", "tcpSocket", "grpc"} {
				if get(p, net) != nil {
					t.Errorf("%s: %s uses %s, but %s %s listens on no port", ct, kind, net, ct.inv.bin, ct.inv.sub)
				}
			}
		}
		dir := filepath.Dir(ct.m.file)
		switch ct.inv.bin + " " + ct.inv.sub {
		case "coordinator serve":
			coordinators++
			if r, _ := get(ct.m.doc, "spec", "replicas").(int); r < 2 {
				t.Errorf("%s: %d replicas; run two or more so that one stands by", ct, r)
			}
			f, err := jobFromConfigMap(t, ct, configMaps)
			if err != nil {
				t.Errorf("%s: %v", ct, err)
				continue
			}
			s, err := loadJob(ct.inv, f)
			if err != nil {
				t.Errorf("%s: the job spec does not load: %v", ct, err)
				continue
			}
			jobNames[s.Name] = ct.String()
			if devices[dir] == nil {
				devices[dir] = map[string][]string{}
			}
			devices[dir][s.Device] = append(devices[dir][s.Device], ct.String())
			if s.Dataset.URI == "" {
				t.Errorf("%s: the job spec has no dataset.uri (coordinator serve refuses it)", ct)
			}
		case "worker join":
			workers++
			workerJobs = append(workerJobs, ct)
			if ct.m.kind() != "StatefulSet" {
				t.Errorf("%s: workers run in a StatefulSet, for a stable --id from the pod name", ct)
			}
			id := ct.inv.flags["id"]
			if id != "$(POD_NAME)" {
				t.Errorf("%s: --id is %q, want $(POD_NAME)", ct, id)
			}
			for _, e := range list(ct.c["env"]) {
				if str(get(e, "name")) == "POD_NAME" && str(get(e, "valueFrom", "fieldRef", "fieldPath")) != "metadata.name" {
					t.Errorf("%s: POD_NAME does not come from metadata.name", ct)
				}
			}
			if get(ct.c, "resources", "requests", "cpu") == nil || get(ct.c, "resources", "requests", "memory") == nil {
				t.Errorf("%s: no cpu and memory requests", ct)
			}
			if get(ct.c, "resources", "limits", "nvidia.com/gpu") != nil {
				gpuDirs[dir] = true
			}
		default:
			t.Errorf("%s: runs %s %s; deploy/kubernetes runs coordinator serve and worker join", ct, ct.inv.bin, ct.inv.sub)
		}
	}
	if coordinators == 0 || workers == 0 {
		t.Fatalf("deploy/kubernetes runs %d coordinator serve and %d worker join containers; want both", coordinators, workers)
	}
	if len(gpuDirs) == 0 {
		t.Error("deploy/kubernetes has no GPU variant (a worker with an nvidia.com/gpu limit)")
	}
	for f, vals := range shared {
		if len(vals) > 1 {
			t.Errorf("the containers disagree on --%s: %v", f, vals)
		}
	}
	for _, w := range workerJobs {
		if _, ok := jobNames[w.inv.flags["job"]]; !ok {
			t.Errorf("%s: --job %q is not the name of the coordinators' job spec (%v)", w, w.inv.flags["job"], keys(jobNames))
		}
	}
	for dir, devs := range devices {
		want := "cpu"
		if gpuDirs[dir] {
			want = "cuda"
		}
		for d, where := range devs {
			if d != want {
				t.Errorf("%v: the job runs on device %q beside workers that want %q (directory %s)", where, d, want, dir)
			}
		}
	}
}

// unit is the [Service] section of a systemd unit: key -> values.
type unit map[string][]string

// readUnit parses a unit file's [Service] section, joining continued lines.
func readUnit(path string) (unit, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	u := unit{}
	section, pending := "", ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if pending == "" && (line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";")) {
			continue
		}
		if strings.HasSuffix(line, `\`) {
			pending += strings.TrimSuffix(line, `\`) + " "
			continue
		}
		line, pending = pending+line, ""
		if strings.HasPrefix(line, "[") {
			section = line
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s: %q is not key=value", path, line)
		}
		if section == "[Service]" {
			u[strings.TrimSpace(k)] = append(u[strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u, sc.Err()
}

func TestSystemd(t *testing.T) {
	dir := filepath.Join(root, "deploy", "systemd")
	want := map[string]string{
		"gantry-coordinator.service": "coordinator serve",
		"gantry-worker@.service":     "worker join",
	}
	shared := map[string]map[string][]string{}
	for file, cmd := range want {
		u, err := readUnit(filepath.Join(dir, file))
		if err != nil {
			t.Error(err)
			continue
		}
		if len(u["EnvironmentFile"]) == 0 {
			t.Errorf("%s: no EnvironmentFile= for the S3 credentials", file)
		}
		if got := u["Restart"]; len(got) != 1 || got[0] != "on-failure" {
			t.Errorf("%s: Restart=%v, want on-failure", file, got)
		}
		if len(u["ExecStart"]) != 1 {
			t.Errorf("%s: %d ExecStart= lines, want 1", file, len(u["ExecStart"]))
			continue
		}
		line := strings.TrimLeft(u["ExecStart"][0], "-@:+!")
		if strings.ContainsAny(line, `"'$;`) {
			t.Errorf("%s: ExecStart uses quotes, variables or ';' that this test does not parse: %s", file, line)
			continue
		}
		inv, err := checkArgv(strings.Fields(line))
		if err != nil {
			t.Errorf("%s: %v", file, err)
			continue
		}
		if got := inv.bin + " " + inv.sub; got != cmd {
			t.Errorf("%s: runs %s, want %s", file, got, cmd)
		}
		if !filepath.IsAbs(strings.Fields(line)[0]) {
			t.Errorf("%s: ExecStart names %s, not an absolute path", file, strings.Fields(line)[0])
		}
		for _, f := range []string{"etcd", "nats", "store"} {
			if shared[f] == nil {
				shared[f] = map[string][]string{}
			}
			shared[f][inv.flags[f]] = append(shared[f][inv.flags[f]], file)
		}
		if inv.bin == "worker" && !strings.Contains(inv.flags["id"], "%i") {
			t.Errorf("%s: --id %q does not use the instance (%%i), so two instances on a host collide", file, inv.flags["id"])
		}
	}
	for f, vals := range shared {
		if len(vals) > 1 {
			t.Errorf("the units disagree on --%s: %v", f, vals)
		}
	}
	// the environment file template sets only variables the binaries read
	data, err := os.ReadFile(filepath.Join(dir, "gantry.env.example"))
	if err != nil {
		t.Fatal(err)
	}
	var vars []string
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, _, ok := strings.Cut(line, "=")
		if !ok {
			t.Errorf("gantry.env.example: %q is not VAR=value", line)
			continue
		}
		vars = append(vars, k)
	}
	checkEnvRead(t, "gantry.env.example", vars)
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"} {
		if !contains(vars, k) {
			t.Errorf("gantry.env.example has no %s", k)
		}
	}
}

// TestSystemdVerify runs systemd-analyze verify on the units, with ExecStart pointed at the
// binaries TestMain built (the worker template as instance 0).
func TestSystemdVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not found (Debian package systemd): the units' syntax is not verified")
	}
	dir := t.TempDir()
	for src, dst := range map[string]string{
		"gantry-coordinator.service": "gantry-coordinator.service",
		"gantry-worker@.service":     "gantry-worker@0.service",
	} {
		data, err := os.ReadFile(filepath.Join(root, "deploy", "systemd", src))
		if err != nil {
			t.Fatal(err)
		}
		data = bytes.ReplaceAll(data, []byte("/usr/local/bin/"), []byte(binDir+"/"))
		for _, name := range []string{src, dst} {
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	cmd := exec.Command(analyze, "verify", "gantry-coordinator.service", "gantry-worker@0.service")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
