package zaphclog

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func TestLevelsAndFields(t *testing.T) {
	var buf bytes.Buffer
	hl := hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Trace, DisableTime: true})
	zl := New(hl, zapcore.WarnLevel).Named("etcd").With(zap.String("member-id", "abc"))
	zl.Info("quiet line")
	zl.Warn("slow request", zap.Int("took-ms", 120))
	zl.Error("lost", zap.Error(errors.New("boom")))
	out := buf.String()
	if strings.Contains(out, "quiet line") {
		t.Errorf("info line passed a warn filter:\n%s", out)
	}
	for _, want := range []string{"[WARN]  etcd: slow request: member_id=abc took_ms=120", "[ERROR] etcd: lost: member_id=abc error=boom"} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
}

func TestNilLoggerDiscards(t *testing.T) {
	zl := New(nil, zapcore.DebugLevel)
	zl.Error("nothing") // must not panic
	if zl.Core().Enabled(zapcore.ErrorLevel) {
		t.Fatal("nil hclog logger should give a disabled zap core")
	}
}
