package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	netmail "net/mail"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"time"

	"github.com/heraldhq/herald/events"
	"github.com/heraldhq/herald/jsrt"
	"github.com/heraldhq/herald/mailer"
	"github.com/heraldhq/herald/rules"
	"github.com/heraldhq/herald/schema"
)

func runCommand(ctx context.Context, e env, args []string) error {
	fs := e.flags("run")
	cfg, err := loadConfig(e.getenv, fs, args)
	if err != nil {
		return err
	}
	logger := cfg.logger(e.stderr)
	slog.SetDefault(logger)
	err = run(ctx, cfg, logger)
	if err != nil && ctx.Err() != nil {
		// Stopped by a signal while starting: a clean exit.
		logger.Info("stopped during start-up", slog.Any("reason", err))
		return nil
	}
	return err
}

// run wires the worker and runs it until ctx is done, then shuts down in
// the reverse order of start-up: intake first, the database last.
func run(ctx context.Context, cfg config, logger *slog.Logger) error {
	tuneGC()
	// The mailer refuses a bad From too, but in words that would point at
	// SMTP_URL.
	if _, err := netmail.ParseAddress(cfg.MailFrom); err != nil {
		return fmt.Errorf("MAIL_FROM=%q: not an email address: %w", cfg.MailFrom, err)
	}
	db, err := openDB(ctx, cfg.DatabaseURL, logger)
	if err != nil {
		return err
	}
	defer db.Close()
	// Each batch holds a connection: room for all of them, and for the
	// dispatchers, the outbox and the reloads beside them.
	db.SetMaxOpenConns(max(32, cfg.Concurrency+16))
	if cfg.AutoMigrate {
		applied, err := schema.Migrate(ctx, db)
		if err != nil {
			return err
		}
		if len(applied) > 0 {
			logger.Info("applied migrations", slog.Any("versions", applied))
		}
	}

	nc, err := connectNATS(cfg, true, logger)
	if err != nil {
		return err
	}
	defer nc.close()
	if _, err := events.EnsureStream(ctx, nc.js, events.StreamConfig{
		Name: cfg.Stream, SubjectPrefix: cfg.SubjectPrefix, MaxAge: cfg.StreamMaxAge,
	}); err != nil {
		return err
	}

	// A runtime per batch worker, and spare ones for webhook mappings.
	pool := jsrt.New(jsrt.Config{Size: cfg.Concurrency + 2, Logger: logger})
	cache, err := rules.NewRuleCache(ctx, db, rules.RuleCacheConfig{DSN: cfg.DatabaseURL, ActionGuard: pool.ActionGuard, Logger: logger})
	if err != nil {
		return err
	}
	logged := map[string]bool{} // each error once per process; the reloads are sequential
	cache.OnReload = func(rs *rules.RuleSet) {
		pool.Forget(rs)
		for _, err := range rules.ReportBrokenPolicies(ctx, db, rs, pool.Check) {
			if !logged[err.Error()] {
				logged[err.Error()] = true
				logger.Warn("policy does not compile", slog.String("error", err.Error()))
			}
		}
	}
	cache.OnReload(cache.Current())

	mail, err := mailer.New(mailer.Config{SMTPURL: cfg.SMTPURL, From: cfg.MailFrom, Dir: filepath.Join(cfg.DataDir, "mail")})
	if err != nil {
		return fmt.Errorf("SMTP_URL: %w", err)
	}
	publisher := events.NewPublisher(nc.js, cfg.SubjectPrefix)
	outbox := rules.NewOutbox(db, rules.OutboxConfig{
		Senders: map[string]rules.OutboxSender{
			rules.OutboxEvent: rules.PublishEvents(publisher),
			rules.OutboxEmail: emailSender(db, mail, cfg.MailFrom),
		},
		Permanent: permanentMailError,
		Logger:    logger,
	})
	dispatcher := rules.NewDispatcher(db, rules.DispatcherConfig{
		Transports: map[string]rules.Transporter{
			rules.ModeLocal:        &rules.LocalTransport{DB: db, Mappings: pool},
			rules.ModeWebhook:      &rules.WebhookTransport{DB: db, Mappings: pool, Timeout: cfg.WebhookTimeout},
			rules.ModeWebhookSlack: &rules.WebhookTransport{DB: db, Mappings: pool, Timeout: cfg.WebhookTimeout, Slack: true},
			rules.ModeEmail:        &emailTransport{db: db, mail: mail, from: cfg.MailFrom},
		},
		MaxAttempts: cfg.DeliveryAttempts,
		MinBackoff:  cfg.DeliveryMinBackoff,
		MaxBackoff:  cfg.DeliveryMaxBackoff,
		Logger:      logger,
	})
	engine := rules.NewEngine(db, cache, pool, rules.EngineConfig{
		MaxEventDepth: cfg.MaxEventDepth,
		AfterCommit: func(c rules.Committed) {
			if c.Outbox > 0 {
				outbox.Wake()
			}
			if c.Deliveries > 0 {
				dispatcher.Wake()
			}
			if cfg.afterCommit != nil {
				cfg.afterCommit(c.Events)
			}
		},
		Logger: logger,
	})
	if cfg.onEngine != nil {
		cfg.onEngine(engine)
	}
	sub := events.NewSubscriber(nc.js, engine, rules.NewStore(db), events.SubscriberConfig{
		Stream:        cfg.Stream,
		Consumer:      cfg.Consumer,
		SubjectPrefix: cfg.SubjectPrefix,
		BatchSize:     cfg.BatchSize,
		Concurrency:   cfg.Concurrency,
		BatchWait:     cfg.BatchWait,
		AckWait:       cfg.AckWait,
		MaxPayload:    cfg.MaxPayload,
		MaxAttempts:   cfg.MaxAttempts,
		Logger:        logger,
	})

	// The HTTP address is taken before anything runs: one that cannot be
	// listened on stops the worker at start, like any setting that cannot
	// work.
	var httpListener net.Listener
	if cfg.HTTPAddr != "" {
		if httpListener, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			return fmt.Errorf("HERALD_HTTP_ADDR=%s: %w", cfg.HTTPAddr, err)
		}
	}

	// Background services stop when bgCtx ends, after the subscriber drained.
	bgCtx, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBackground()
	var bg sync.WaitGroup
	bg.Go(func() {
		if err := cache.Watch(bgCtx, 30*time.Second); err != nil {
			logger.Error("rule watcher stopped", slog.Any("error", err))
		}
	})
	bg.Go(func() { _ = outbox.Run(bgCtx) })
	bg.Go(func() { _ = dispatcher.Run(bgCtx) })

	var srv *http.Server
	if httpListener != nil {
		srv = &http.Server{Handler: opsHandler(db, nc, engine, cache, sub.Consuming, cfg), ReadHeaderTimeout: 5 * time.Second}
		bg.Go(func() {
			if err := srv.Serve(httpListener); err != nil && !errors.Is(err, http.ErrServerClosed) {
				logger.Error("http server stopped", slog.Any("error", err))
			}
		})
	}

	logger.Info("worker running", slog.String("stream", cfg.Stream), slog.String("consumer", cfg.Consumer),
		slog.Int("rules", len(cache.Current().Rules)), slog.Int("batch_size", cfg.BatchSize),
		slog.Int("concurrency", cfg.Concurrency), slog.String("http", cfg.HTTPAddr), slog.String("mail", mail.Backend()))

	// The subscriber returns once ctx is done and in-flight batches are
	// finished (or the shutdown timeout cancelled them).
	stopCtx, cancelStop := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelStop()
	go func() {
		<-ctx.Done()
		t := time.AfterFunc(cfg.ShutdownTimeout, cancelStop)
		<-stopCtx.Done()
		t.Stop()
	}()
	runErr := sub.Run(ctx, stopCtx)
	logger.Info("shutting down")
	if srv != nil {
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = srv.Shutdown(shutdownCtx)
		cancel()
	}
	stopBackground()
	bg.Wait()
	if runErr != nil {
		return fmt.Errorf("consume events: %w", runErr)
	}
	logger.Info("stopped")
	return nil
}

// tuneGC trades memory for CPU unless GOGC or GOMEMLIMIT say otherwise:
// collect at 3x the live heap, but keep the heap under 128 MiB.
func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(200)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(128 << 20)
	}
}
