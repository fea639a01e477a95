// Package jobs runs custos's units of work (ingest, replicate, fixity,
// sync, restore): named queues with concurrency limits, exclusive lock
// keys, retries with backoff (internal/backoff, the one backoff of custos),
// timeouts, cancellation by id, a status registry with a bounded history,
// and a cron scheduler whose @random_every schedules get a stable per-host
// offset.
//
// It knows nothing about agents, handlers or repositories: a Job is an Info
// plus a Run function. Inside Run, the context carries the job's id,
// attempt number, logger (with job, kind and lock attributes) and progress
// reporter.
//
// # Guarantees
//
// A job waits in FIFO order for a free slot in its queue and for its lock
// key; a job blocked only by its lock does not hold up others in the
// queue. The lock is taken at the first start and kept until the job is
// done, retries included; between attempts the job gives its queue slot
// back. With LockSkip, a job whose key is held by a pending, running or
// retrying job is refused with ErrAlreadyRunning (and logged) and is not
// recorded in the history.
//
// Errors are transient (retried) unless marked Permanent. A job whose
// context is done (cancelled, timed out, Runner closed) is never retried,
// nor is an error that wraps context.Canceled. A panic in Run becomes a
// permanent error, not a crash of the agent.
//
// The final error of a job names the job id and description and wraps the
// job's error, plus ErrCanceled or context.DeadlineExceeded when that
// ended it. A Timeout counts from the first start, not from submission.
//
// # Schedules
//
// Specs are standard 5-field cron ("30 2 * * *", optional CRON_TZ=Zone
// prefix), the descriptors @yearly @annually @monthly @weekly @daily
// @midnight @hourly, "@every <duration>" (counted from when the entry is
// added; at least 1s, where cron would quietly round up) and
// "@random_every <duration>": every <duration>, at a per-host offset,
// aligned to the Unix epoch so that times survive restarts. The offset is
// sha256(seed, name) mod the period, in whole seconds: stable for one host
// and entry name, different between hosts with different seeds. Parse
// errors quote the spec and say what is wrong; the config loader adds
// file, line and field.
//
// The seed file is created once (32 random bytes, mode 0600, written to a
// temporary file and hard-linked into place so that a concurrent creator
// cannot be overwritten); the seed is derived from the whole file content,
// so any non-empty file works. Replacing the scheduler's entries validates
// all of them first; entries that did not change keep their timing.
package jobs
