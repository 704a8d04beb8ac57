// Package zaphclog sends the zap log lines of libraries that log through zap (the etcd client
// and the embedded etcd server) to a go-hclog logger, so that a Gantry process writes one log
// stream in one format. Only lines at or above a chosen level pass; etcd is chatty at Info and
// Warn (retries while a server is away), and Gantry's own Info lines are for state changes.
package zaphclog

import (
	"sort"
	"strings"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// New returns a zap logger that writes entries at min or above to log. A nil log gives a
// logger that discards everything.
func New(log hclog.Logger, min zapcore.Level) *zap.Logger {
	if log == nil {
		return zap.NewNop()
	}
	return zap.New(&core{log: log, min: min})
}

// core is a zapcore.Core writing to hclog. Fields added through With are kept as
// key/value pairs already converted.
type core struct {
	log  hclog.Logger
	min  zapcore.Level
	args []any
}

func (c *core) Enabled(l zapcore.Level) bool { return l >= c.min }

func (c *core) With(fields []zapcore.Field) zapcore.Core {
	n := &core{log: c.log, min: c.min}
	n.args = append(append(n.args, c.args...), pairs(fields)...)
	return n
}

func (c *core) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *core) Write(e zapcore.Entry, fields []zapcore.Field) error {
	args := append(append([]any{}, c.args...), pairs(fields)...)
	log := c.log
	if e.LoggerName != "" {
		log = log.Named(e.LoggerName)
	}
	switch {
	case e.Level >= zapcore.ErrorLevel:
		log.Error(e.Message, args...)
	case e.Level == zapcore.WarnLevel:
		log.Warn(e.Message, args...)
	case e.Level == zapcore.InfoLevel:
		log.Info(e.Message, args...)
	default:
		log.Debug(e.Message, args...)
	}
	return nil
}

func (c *core) Sync() error { return nil }

// pairs renders zap fields as sorted hclog key/value pairs with snake_case keys.
func pairs(fields []zapcore.Field) []any {
	if len(fields) == 0 {
		return nil
	}
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fields {
		f.AddTo(enc)
	}
	keys := make([]string, 0, len(enc.Fields))
	for k := range enc.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]any, 0, 2*len(keys))
	for _, k := range keys {
		out = append(out, strings.ReplaceAll(k, "-", "_"), enc.Fields[k])
	}
	return out
}
