package agent

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/custos-backup/custos/jobs"
)

// metrics are the agent's Prometheus metrics, on a registry of its own so
// that two agents in one process (tests) do not collide.
type metrics struct {
	reg          *prometheus.Registry
	jobs         *prometheus.CounterVec
	datasets     *prometheus.CounterVec
	bytes        *prometheus.CounterVec
	bytesAdded   *prometheus.CounterVec
	files        *prometheus.CounterVec
	lastSuccess  *prometheus.GaugeVec
	listFailures *prometheus.CounterVec
	// Per dataset and kind, for alerting rules: a failure counter, the
	// last outcome (1 ok, 0 not), and when a job of it last succeeded.
	jobFailures    *prometheus.CounterVec
	jobLastOK      *prometheus.GaugeVec
	jobLastSuccess *prometheus.GaugeVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "custos_jobs_total", Help: "Jobs finished, by kind and result (ok, error, canceled, timeout).",
		}, []string{"kind", "result"}),
		datasets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "custos_ingest_attempts_total", Help: "Dataset ingest attempts, by source and result (ok, error).",
		}, []string{"source", "result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "custos_ingest_bytes_total", Help: "Logical bytes in backed-up datasets, by source.",
		}, []string{"source"}),
		bytesAdded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "custos_ingest_bytes_added_total", Help: "Bytes newly stored in repositories (after dedup and compression), by source.",
		}, []string{"source"}),
		files: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "custos_ingest_files_total", Help: "Files in backed-up datasets, by source.",
		}, []string{"source"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "custos_ingest_last_success_timestamp_seconds", Help: "When each dataset was last backed up successfully.",
		}, []string{"source", "dataset"}),
		listFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "custos_source_list_failures_total", Help: "Source runs that failed before any dataset started (datasets_command failed).",
		}, []string{"source"}),
	}
	m.jobFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "custos_job_failures_total", Help: "Jobs whose final attempt failed (error or timeout), by kind, source and dataset.",
	}, []string{"kind", "source", "dataset"})
	m.jobLastOK = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "custos_job_last_outcome_ok", Help: "1 if the last job of this kind, source and dataset ended ok, 0 if it failed (canceled jobs do not count).",
	}, []string{"kind", "source", "dataset"})
	m.jobLastSuccess = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "custos_job_last_success_timestamp_seconds", Help: "When a job of this kind, source and dataset last ended ok.",
	}, []string{"kind", "source", "dataset"})
	m.reg.MustRegister(m.jobs, m.datasets, m.bytes, m.bytesAdded, m.files, m.lastSuccess, m.listFailures,
		m.jobFailures, m.jobLastOK, m.jobLastSuccess,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) watchRunner(r *jobs.Runner) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "custos_jobs_running", Help: "Jobs running or waiting to retry.",
	}, func() float64 { return float64(len(r.Running())) }))
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "custos_jobs_pending", Help: "Jobs waiting for a queue slot or a lock.",
	}, func() float64 { return float64(len(r.Pending())) }))
}

func (m *metrics) jobChanged(s jobs.Status) {
	if s.State == jobs.StateDone {
		m.jobs.WithLabelValues(s.Kind, string(s.Result)).Inc()
		switch s.Result {
		case jobs.ResultOK:
			m.jobLastOK.WithLabelValues(s.Kind, s.Source, s.Dataset).Set(1)
			m.jobLastSuccess.WithLabelValues(s.Kind, s.Source, s.Dataset).Set(float64(s.Finished.Unix()))
		case jobs.ResultError, jobs.ResultTimeout:
			m.jobFailures.WithLabelValues(s.Kind, s.Source, s.Dataset).Inc()
			m.jobLastOK.WithLabelValues(s.Kind, s.Source, s.Dataset).Set(0)
		}
	}
}

// Finished implements Events.
func (m *metrics) Finished(r *DatasetResult) {
	if r.Err != nil {
		m.datasets.WithLabelValues(r.Source, "error").Inc()
		return
	}
	m.datasets.WithLabelValues(r.Source, "ok").Inc()
	if r.Record != nil {
		m.bytes.WithLabelValues(r.Source).Add(float64(r.Record.TotalBytes))
		m.bytesAdded.WithLabelValues(r.Source).Add(float64(r.Record.BytesAdded))
		m.files.WithLabelValues(r.Source).Add(float64(r.Record.TotalFiles))
		m.lastSuccess.WithLabelValues(r.Source, r.Dataset).Set(float64(r.End.Unix()))
	}
}

func (m *metrics) sourceListFailed(source string) { m.listFailures.WithLabelValues(source).Inc() }

func (m *metrics) watchSpool(depth, failed func() int) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "custos_catalog_spool_depth", Help: "Catalog records waiting on disk for etcd to come back.",
	}, func() float64 { return float64(depth()) }))
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "custos_catalog_spool_failed", Help: "Catalog records set aside in the spool because etcd can never take them; their backups are not findable.",
	}, func() float64 { return float64(failed()) }))
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}
