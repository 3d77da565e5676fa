package rules

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"
)

// ConfigChannel is the LISTEN/NOTIFY channel on which triggers announce
// changes to the rule configuration; the payload is the schema name.
const ConfigChannel = "herald_config"

// RuleCache holds the current [RuleSet] and reloads it when the
// configuration changes. It is safe for concurrent use.
type RuleCache struct {
	db     *sqlx.DB
	cfg    RuleCacheConfig
	schema string
	log    *slog.Logger
	cur    atomic.Pointer[RuleSet]
	// OnReload, if set, is called with each newly loaded rule set.
	OnReload func(*RuleSet)
}

// RuleCacheConfig configures a [RuleCache].
type RuleCacheConfig struct {
	// DSN is the database to LISTEN on for changes in [RuleCache.Watch].
	DSN string
	// ActionGuard, when set, lets rules of expression policies be skipped
	// for actions they cannot fire for (see [RuleSet.Guard]).
	ActionGuard ActionGuard
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// NewRuleCache loads the rule set from db.
func NewRuleCache(ctx context.Context, db *sqlx.DB, cfg RuleCacheConfig) (*RuleCache, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	c := &RuleCache{db: db, cfg: cfg, log: cfg.Logger}
	if err := db.GetContext(ctx, &c.schema, `SELECT current_schema()`); err != nil {
		return nil, fmt.Errorf("read current schema: %w", err)
	}
	if err := c.Reload(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// Current returns the rule set in force.
func (c *RuleCache) Current() *RuleSet { return c.cur.Load() }

// Reload reads the rule set now.
func (c *RuleCache) Reload(ctx context.Context) error {
	rs, err := LoadRuleSet(ctx, c.db)
	if err != nil {
		return err
	}
	if c.cfg.ActionGuard != nil {
		rs.Guard(c.cfg.ActionGuard)
	}
	c.cur.Store(rs)
	if c.OnReload != nil {
		c.OnReload(rs)
	}
	return nil
}

// Watch reloads the rule set whenever a trigger announces a change in this
// cache's schema, once LISTEN is in place (a change committed before then
// was announced to no one), after a lost LISTEN connection is
// re-established, and every fallback interval. A reload that fails is
// tried again after 250 ms, then after twice as long each time up to the
// fallback interval, until one succeeds. It returns when ctx is done, even
// while the LISTEN connection cannot be made.
func (c *RuleCache) Watch(ctx context.Context, fallback time.Duration) error {
	if fallback <= 0 {
		fallback = 30 * time.Second
	}
	l := pq.NewListener(c.cfg.DSN, 100*time.Millisecond, 10*time.Second, func(ev pq.ListenerEventType, err error) {
		if err != nil {
			c.log.WarnContext(ctx, "config listener", slog.Any("error", err))
		}
	})
	// Listen returns once the listener's first connection is made, which
	// may be never (a connection limit reached, the database down): it runs
	// beside the loop below, which reloads every fallback interval meanwhile.
	listening := make(chan error, 1)
	go func() { listening <- l.Listen(ConfigChannel) }()
	defer func() {
		// Close ends a Listen still waiting, but first waits for a
		// connection attempt in progress, which may take as long as a dial
		// does: Watch does not wait for it.
		go func() { _ = l.Close() }()
	}()
	var notify <-chan *pq.Notification // nil until LISTEN is in place
	t := time.NewTicker(fallback)
	defer t.Stop()
	// retry fires after a failed reload; nil when the last one succeeded.
	var retry <-chan time.Time
	var backoff time.Duration
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-retry:
		case err := <-listening:
			listening = nil
			if err != nil {
				// Changes still take effect, within the fallback interval.
				c.log.ErrorContext(ctx, "listen for config changes; reloading every fallback interval only",
					slog.String("channel", ConfigChannel), slog.Duration("fallback", fallback), slog.Any("error", err))
				continue
			}
			notify = l.Notify
			// Reload: a change committed before LISTEN was in place was
			// announced before anyone listened.
		case n := <-notify:
			// nil means the connection was re-established: changes may
			// have been missed.
			if n != nil && n.Extra != c.schema {
				continue
			}
			// Coalesce a burst of notifications into one reload.
		drain:
			for {
				select {
				case <-notify:
				default:
					break drain
				}
			}
		case <-t.C:
		}
		if err := c.Reload(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			backoff = min(max(2*backoff, 250*time.Millisecond), fallback)
			retry = time.After(backoff)
			c.log.WarnContext(ctx, "reload rules", slog.Duration("retry_in", backoff), slog.Any("error", err))
			continue
		}
		retry, backoff = nil, 0
		c.log.DebugContext(ctx, "rules reloaded", slog.Int("rules", len(c.Current().Rules)))
	}
}
