// Package e2e holds Gantry's end-to-end and fault-injection tests: they build the coordinator
// and worker binaries once, run them as real processes on loopback (with `coordinator dev`, or
// with `coordinator serve` and `worker join` against an etcd and a NATS server embedded in the
// test, and a MinIO process for the S3 store), and break things while a job trains: worker and
// coordinator processes killed with SIGKILL, every process killed while a checkpoint is being
// written, NATS, etcd and MinIO stopped and restarted, a job resumed with fewer workers. They
// read what the processes leave behind (logs, metrics.jsonl, checkpoints, the job state in
// etcd) and report the measured recovery times with t.Logf.
package e2e
