package controller

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/points"
	"github.com/ferrydr/ferry/storage"
)

// The controller's Prometheus metrics (docs/observability.md lists them).
// Gauges of state (RPO, health, agents, repository, free space) are read
// at scrape time from the same functions `machines list` and `agents
// list` use, so a scrape and the CLI agree; events (points committed,
// bytes stored, jobs ended) are counted as they happen.
type metrics struct {
	reg *prometheus.Registry

	cycle    *prometheus.HistogramVec // machine
	shipped  *prometheus.CounterVec   // machine
	stored   *prometheus.CounterVec   // machine
	ingest   prometheus.Counter
	jobDur   *prometheus.HistogramVec // kind, outcome
	jobsDone *prometheus.CounterVec   // kind, outcome
}

// healthLevels are the values of ferry_machine_health's health label: one
// series per level, 1 for the machine's current one.
var healthLevels = []string{points.Healthy, points.Warning, points.Degraded, points.Critical}

var (
	descRPO       = prometheus.NewDesc("ferry_machine_rpo_seconds", "Age of the machine's newest recovery point (absent before the first point).", []string{"machine"}, nil)
	descThreshold = prometheus.NewDesc("ferry_machine_rpo_threshold_seconds", "The RPO threshold of the machine's policy.", []string{"machine"}, nil)
	descLastPoint = prometheus.NewDesc("ferry_machine_last_point_timestamp_seconds", "Instant of the machine's newest recovery point, Unix seconds.", []string{"machine"}, nil)
	descHealth    = prometheus.NewDesc("ferry_machine_health", "1 for the machine's current health level, 0 for the others.", []string{"machine", "health"}, nil)
	descRepoSize  = prometheus.NewDesc("ferry_repository_size_bytes", "Bytes of all pack files of the repository.", nil, nil)
	descRepoPts   = prometheus.NewDesc("ferry_repository_points", "Committed recovery points in the repository.", nil, nil)
	descFree      = prometheus.NewDesc("ferry_data_free_bytes", "Free bytes on the filesystem of the controller's data directory.", nil, nil)
	descReserve   = prometheus.NewDesc("ferry_data_reserve_bytes", "The free-space reserve below which ingest pauses.", nil, nil)
	descAgentUp   = prometheus.NewDesc("ferry_agent_connected", "1 while the agent has a session with the controller.", []string{"agent"}, nil)
	descAgentInfo = prometheus.NewDesc("ferry_agent_info", "Always 1; the agent's version and platform as labels.", []string{"agent", "version", "platform"}, nil)
	descScrapeErr = prometheus.NewDesc("ferry_scrape_errors", "1 when part of this scrape could not be read (the log says why).", []string{"part"}, nil)
)

func newMetrics(s *Server) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		cycle: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "ferry_machine_cycle_duration_seconds", Help: "Time from a cycle's snapshot to its point's commit.",
			Buckets: prometheus.ExponentialBuckets(0.5, 2, 14), // 0.5 s … about 2.3 h
		}, []string{"machine"}),
		shipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_machine_shipped_bytes_total", Help: "Bytes received from the machine's agent and stored (compressed, as sent).",
		}, []string{"machine"}),
		stored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_machine_stored_bytes_total", Help: "Bytes of new chunks the machine's committed points introduced.",
		}, []string{"machine"}),
		ingest: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_ingest_bytes_total", Help: "Bytes the controller received from agents and stored; rate() is the ingest bytes/s.",
		}),
		jobDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "ferry_job_duration_seconds", Help: "Duration of ended jobs from creation to end, by kind and outcome.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 14), // 1 s … about 4.5 h
		}, []string{"kind", "outcome"}),
		jobsDone: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_jobs_finished_total", Help: "Jobs ended, by kind and outcome (succeeded, partial, failed, cancelled).",
		}, []string{"kind", "outcome"}),
	}
	m.reg.MustRegister(m.cycle, m.shipped, m.stored, m.ingest, m.jobDur, m.jobsDone, stateCollector{s},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// handler serves the registry in the Prometheus text format.
func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

func (m *metrics) pointCommitted(machine string, p storage.Point) {
	if !p.Committed.IsZero() && !p.Instant.IsZero() && p.Committed.After(p.Instant) {
		m.cycle.WithLabelValues(machine).Observe(p.Committed.Sub(p.Instant).Seconds())
	}
	m.stored.WithLabelValues(machine).Add(float64(p.Bytes))
}

func (m *metrics) batchStored(machine string, n int64) {
	m.shipped.WithLabelValues(machine).Add(float64(n))
	m.ingest.Add(float64(n))
}

func (m *metrics) jobEnded(j api.Job) {
	d := j.Updated.Sub(j.Created).Seconds()
	m.jobDur.WithLabelValues(j.Kind, j.State).Observe(max(d, 0))
	m.jobsDone.WithLabelValues(j.Kind, j.State).Inc()
}

// stateCollector reads the controller's state at each scrape.
type stateCollector struct{ s *Server }

func (stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRPO, descThreshold, descLastPoint, descHealth, descRepoSize, descRepoPts,
		descFree, descReserve, descAgentUp, descAgentInfo, descScrapeErr} {
		ch <- d
	}
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	failed := func(part string, err error) {
		s.log.Warn("metrics: part of the scrape failed", "part", part, "err", err)
		ch <- prometheus.MustNewConstMetric(descScrapeErr, prometheus.GaugeValue, 1, part)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	if ms, err := s.Machines(ctx); err != nil {
		failed("machines", err)
	} else {
		thresholds := map[string]float64{}
		if ps, err := s.cat.Policies(ctx); err == nil {
			for _, p := range ps {
				thresholds[p.Name] = time.Duration(p.RPOThreshold).Seconds()
			}
		}
		for _, m := range ms {
			if m.RPOSeconds != nil {
				gauge(descRPO, *m.RPOSeconds, m.Name)
			}
			if m.LastPoint != nil {
				gauge(descLastPoint, float64(m.LastPoint.UnixNano())/1e9, m.Name)
			}
			if t, ok := thresholds[m.Policy]; ok {
				gauge(descThreshold, t, m.Name)
			}
			for _, h := range healthLevels {
				v := 0.0
				if m.Health == h {
					v = 1
				}
				gauge(descHealth, v, m.Name, h)
			}
		}
	}
	if as, err := s.Agents(ctx); err != nil {
		failed("agents", err)
	} else {
		for _, a := range as {
			up := 0.0
			if a.Connected {
				up = 1
			}
			gauge(descAgentUp, up, a.Name)
			gauge(descAgentInfo, 1, a.Name, a.Version, a.Platform)
		}
	}
	if st, err := s.repo.Stats(ctx); err != nil {
		failed("repository", err)
	} else {
		gauge(descRepoSize, float64(st.StoredBytes))
		gauge(descRepoPts, float64(st.Points))
	}
	if s.disk != nil {
		if free, _, err := s.disk.free(s.cfg.DataDir); err != nil {
			failed("free_space", err)
		} else {
			gauge(descFree, float64(free))
		}
		gauge(descReserve, float64(s.disk.reserve))
	}
}

// jobEnded is told of each job's end by the job engine.
func (s *Server) jobEnded(j api.Job) {
	s.metrics.jobEnded(j)
	s.alertJobEnded(j)
}
