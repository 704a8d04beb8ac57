// Package deploy holds the tests that keep deploy/ true to the binaries: every flag the
// Kubernetes manifests and the systemd units pass to `coordinator serve` and `worker join`
// exists in that command's --help, the required ones are there, the job spec in the ConfigMap
// loads and validates with pkg/spec, and the names the pieces share (job, store, etcd, NATS,
// Secret, environment variables) agree. The tests build the two binaries once (TestMain).
package deploy
