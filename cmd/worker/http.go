package main

import (
	"context"
	"net/http"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/heraldhq/herald/rules"
)

// opsHandler serves /healthz (the process is up), /readyz (PostgreSQL and
// NATS answer, and the subscriber consumes) and /metrics (Prometheus).
func opsHandler(db *sqlx.DB, nc *natsConn, engine *rules.Engine, ruleSet rules.RuleSource, consuming func() bool, cfg config) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := db.PingContext(ctx); err != nil {
			http.Error(w, "postgres: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		if err := nc.ping(ctx); err != nil {
			http.Error(w, "nats: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		if !consuming() {
			http.Error(w, "not consuming events (starting or stopping)", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	registerEngineMetrics(reg, engine)
	// A reload that keeps failing shows as a rule set that grows old.
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "herald_rules_loaded_timestamp_seconds",
		Help: "When the rule set in force was read from PostgreSQL (Unix time)."},
		func() float64 { return float64(ruleSet.Current().Loaded.UnixMilli()) / 1e3 }))
	registerStoreMetrics(reg, db, nc, cfg)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
}

func registerEngineMetrics(reg *prometheus.Registry, engine *rules.Engine) {
	s := engine.Stats()
	counter := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f))
	}
	counter("herald_events_processed_total", "Events stored and evaluated.", func() float64 { return float64(s.EventsProcessed.Load()) })
	counter("herald_events_duplicate_total", "Redelivered or re-published events that were skipped.", func() float64 { return float64(s.EventsDuplicate.Load()) })
	counter("herald_events_guarded_total", "Events kept from matching any rule by a loop guard.", func() float64 { return float64(s.EventsGuarded.Load()) })
	counter("herald_rule_evaluations_total", "Rule evaluations.", func() float64 { return float64(s.RuleEvaluations.Load()) })
	counter("herald_rules_fired_total", "Rule evaluations that passed.", func() float64 { return float64(s.RulesFired.Load()) })
	counter("herald_batches_redone_total", "Batches run again with a savepoint per policy after an optimistic run failed.", func() float64 { return float64(s.BatchesRedone.Load()) })
	counter("herald_policy_errors_total", "Policies that failed to compile, threw or timed out.", func() float64 { return float64(s.PolicyErrors.Load()) })
	counter("herald_notifications_total", "Notifications written.", func() float64 { return float64(s.Notifications.Load()) })
	counter("herald_policy_evaluations_total", "Expression policy evaluations.", func() float64 { return float64(s.PolicyEvaluations.Load()) })
	counter("herald_policy_seconds_total", "Time spent evaluating expression policies.", func() float64 { return float64(s.PolicyNanos.Load()) / 1e9 })
}

// registerStoreMetrics exports what PostgreSQL and JetStream know: delivery
// and outbox items by status, and the consumer's backlog.
func registerStoreMetrics(reg *prometheus.Registry, db *sqlx.DB, nc *natsConn, cfg config) {
	reg.MustRegister(&tableCollector{db: db})
	reg.MustRegister(&consumerCollector{nc: nc, stream: cfg.Stream, consumer: cfg.Consumer})
}

// consumerCollector exports the consumer's lag: messages not yet delivered
// to it, and messages delivered and not yet acknowledged (held by workers
// or being processed), from one look at the consumer. Both are -1 when
// JetStream does not answer.
type consumerCollector struct {
	nc               *natsConn
	stream, consumer string
}

var (
	pendingDesc    = prometheus.NewDesc("herald_consumer_pending", "Messages in the stream not yet delivered to the worker's consumer.", nil, nil)
	ackPendingDesc = prometheus.NewDesc("herald_consumer_ack_pending", "Messages delivered to the worker's consumer and not yet acknowledged: held by the workers or being processed.", nil, nil)
)

func (c *consumerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- pendingDesc
	ch <- ackPendingDesc
}

func (c *consumerCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	pending, ackPending := -1.0, -1.0
	if cons, err := c.nc.js.Consumer(ctx, c.stream, c.consumer); err == nil {
		if info, err := cons.Info(ctx); err == nil {
			pending, ackPending = float64(info.NumPending), float64(info.NumAckPending)
		}
	}
	ch <- prometheus.MustNewConstMetric(pendingDesc, prometheus.GaugeValue, pending)
	ch <- prometheus.MustNewConstMetric(ackPendingDesc, prometheus.GaugeValue, ackPending)
}

type tableCollector struct{ db *sqlx.DB }

var (
	deliveriesDesc = prometheus.NewDesc("herald_deliveries", "Deliveries by status.", []string{"status"}, nil)
	outboxDesc     = prometheus.NewDesc("herald_outbox_items", "Outbox items (created events, emails) by kind and status.", []string{"kind", "status"}, nil)
	deadDesc       = prometheus.NewDesc("herald_dead_letters", "Messages stored in dead_letters.", nil, nil)
)

func (c *tableCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- deliveriesDesc
	ch <- outboxDesc
	ch <- deadDesc
}

func (c *tableCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var rows []struct {
		Status string `db:"status"`
		N      int64  `db:"n"`
	}
	if err := c.db.SelectContext(ctx, &rows, `SELECT status, count(*) AS n FROM deliveries GROUP BY status`); err == nil {
		for _, r := range rows {
			ch <- prometheus.MustNewConstMetric(deliveriesDesc, prometheus.GaugeValue, float64(r.N), r.Status)
		}
	}
	var orows []struct {
		Kind   string `db:"kind"`
		Status string `db:"status"`
		N      int64  `db:"n"`
	}
	if err := c.db.SelectContext(ctx, &orows, `SELECT kind, status, count(*) AS n FROM outbox GROUP BY kind, status`); err == nil {
		for _, r := range orows {
			ch <- prometheus.MustNewConstMetric(outboxDesc, prometheus.GaugeValue, float64(r.N), r.Kind, r.Status)
		}
	}
	var dead int64
	if err := c.db.GetContext(ctx, &dead, `SELECT count(*) FROM dead_letters`); err == nil {
		ch <- prometheus.MustNewConstMetric(deadDesc, prometheus.GaugeValue, float64(dead))
	}
}
