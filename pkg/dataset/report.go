package dataset

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
)

// Summary counts what an import did; it is printed at the end and kept in the manifest.
type Summary struct {
	Seen     int            `json:"seen"`               // inputs considered (images and other files)
	Imported int            `json:"imported"`           // images written
	Skipped  int            `json:"skipped"`            // inputs refused, by reason in Problems
	Ignored  int            `json:"ignored"`            // files without an image extension
	Problems map[string]int `json:"problems,omitempty"` // skip reason -> count
	Policies map[string]int `json:"policies,omitempty"` // policy applied -> count of images
}

// Report prints one line per input that was skipped, ignored or changed by a policy, and
// counts them. Lines beyond limit per kind are counted but not printed.
type Report struct {
	mu      sync.Mutex
	w       io.Writer
	limit   int
	printed map[string]int
	s       Summary
}

func newReport(w io.Writer, limit int) *Report {
	if w == nil {
		w = io.Discard
	}
	return &Report{w: w, limit: limit, printed: map[string]int{},
		s: Summary{Problems: map[string]int{}, Policies: map[string]int{}}}
}

func (r *Report) line(kind, text string) {
	r.printed[kind]++
	if r.limit < 0 || r.printed[kind] <= r.limit {
		fmt.Fprintln(r.w, text)
	} else if r.printed[kind] == r.limit+1 {
		fmt.Fprintf(r.w, "dataset: more %q lines follow; counted in the summary, not printed (--report-limit)\n", kind)
	}
}

// skip records an input that was refused.
func (r *Report) skip(name, kind, detail string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.s.Skipped++
	r.s.Problems[kind]++
	r.line(kind, fmt.Sprintf("dataset: skip %s: %s", name, detail))
}

// ignore records a file that is not an image by its name.
func (r *Report) ignore(name, detail string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.s.Ignored++
	r.line("ignored", fmt.Sprintf("dataset: ignore %s: %s", name, detail))
}

// policy records a change applied to n accepted images and prints its line; n < 0 counts
// -n images without printing.
func (r *Report) policy(name, kind, detail string, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if n < 0 {
		r.s.Policies[kind] -= n
		return
	}
	r.s.Policies[kind] += n
	r.line(kind, fmt.Sprintf("dataset: %s %s: %s", kind, name, detail))
}

func (r *Report) seen(n int) {
	r.mu.Lock()
	r.s.Seen += n
	r.mu.Unlock()
}

func (r *Report) imported(n int) {
	r.mu.Lock()
	r.s.Imported += n
	r.mu.Unlock()
}

// Summary returns a copy of the counts so far.
func (r *Report) Summary() Summary {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.s
	s.Problems, s.Policies = copyMap(r.s.Problems), copyMap(r.s.Policies)
	return s
}

func (r *Report) restore(s Summary) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.s = s
	r.s.Problems, r.s.Policies = copyMap(s.Problems), copyMap(s.Policies)
}

func copyMap(m map[string]int) map[string]int {
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// String renders the summary as lines.
func (s Summary) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seen %d, imported %d, skipped %d, ignored %d", s.Seen, s.Imported, s.Skipped, s.Ignored)
	for _, part := range []struct {
		title string
		m     map[string]int
	}{{"skipped", s.Problems}, {"policy", s.Policies}} {
		keys := make([]string, 0, len(part.m))
		for k := range part.m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, "\n  %s %-16s %d", part.title, k, part.m[k])
		}
	}
	return b.String()
}
