package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"runtime"
	"strconv"
	"time"

	"github.com/heraldhq/herald/events"
	"github.com/heraldhq/herald/rules"
)

// config is the worker's configuration. Every field is read from the
// environment variable named in its comment; loadConfig's flags
// (-database-url, -nats-url, -stream, -subject-prefix, -consumer and
// -data-dir) override the variables they name.
type config struct {
	DatabaseURL        string        // DATABASE_URL
	NATSURL            string        // NATS_URL; empty: embedded JetStream server
	SMTPURL            string        // SMTP_URL; empty: emails are written under DataDir/mail
	MailFrom           string        // MAIL_FROM
	EmbeddedNATSListen string        // HERALD_EMBEDDED_NATS_LISTEN
	DataDir            string        // HERALD_DATA_DIR
	Stream             string        // HERALD_STREAM
	SubjectPrefix      string        // HERALD_SUBJECT_PREFIX
	Consumer           string        // HERALD_CONSUMER
	StreamMaxAge       time.Duration // HERALD_STREAM_MAX_AGE
	BatchSize          int           // HERALD_BATCH_SIZE
	Concurrency        int           // HERALD_CONCURRENCY
	BatchWait          time.Duration // HERALD_BATCH_WAIT
	MaxEventDepth      int           // HERALD_MAX_EVENT_DEPTH
	MaxPayload         int           // HERALD_MAX_PAYLOAD
	MaxAttempts        int           // HERALD_MAX_ATTEMPTS
	AckWait            time.Duration // HERALD_ACK_WAIT
	DeliveryAttempts   int           // HERALD_DELIVERY_MAX_ATTEMPTS
	DeliveryMinBackoff time.Duration // HERALD_DELIVERY_MIN_BACKOFF
	DeliveryMaxBackoff time.Duration // HERALD_DELIVERY_MAX_BACKOFF
	WebhookTimeout     time.Duration // HERALD_WEBHOOK_TIMEOUT
	HTTPAddr           string        // HERALD_HTTP_ADDR; "off": no HTTP server
	ShutdownTimeout    time.Duration // HERALD_SHUTDOWN_TIMEOUT
	AutoMigrate        bool          // HERALD_AUTO_MIGRATE
	LogLevel           slog.Level    // HERALD_LOG_LEVEL
	LogFormat          string        // HERALD_LOG_FORMAT: text or json

	// afterCommit observes committed batches, onEngine the engine once
	// built (the bench command).
	afterCommit func([]events.Event)
	onEngine    func(*rules.Engine)
}

const defaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/herald?sslmode=disable"

// loadConfig reads the environment, then lets flags on fs override it. It
// reports every problem at once.
func loadConfig(getenv func(string) string, fs *flag.FlagSet, args []string) (config, error) {
	var errs []error
	str := func(key, def string) string {
		if v := getenv(key); v != "" {
			return v
		}
		return def
	}
	num := func(key string, def int) int {
		v := getenv(key)
		if v == "" {
			return def
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			errs = append(errs, fmt.Errorf("%s=%q: want a non-negative integer", key, v))
			return def
		}
		return n
	}
	dur := func(key string, def time.Duration) time.Duration {
		v := getenv(key)
		if v == "" {
			return def
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			errs = append(errs, fmt.Errorf("%s=%q: want a duration such as 30s or 5m", key, v))
			return def
		}
		return d
	}
	boolean := func(key string, def bool) bool {
		v := getenv(key)
		if v == "" {
			return def
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: want true or false", key, v))
			return def
		}
		return b
	}

	c := config{
		DatabaseURL:        str("DATABASE_URL", defaultDatabaseURL),
		NATSURL:            getenv("NATS_URL"),
		SMTPURL:            getenv("SMTP_URL"),
		MailFrom:           str("MAIL_FROM", "herald@localhost"),
		EmbeddedNATSListen: str("HERALD_EMBEDDED_NATS_LISTEN", "127.0.0.1:4223"),
		DataDir:            str("HERALD_DATA_DIR", "data"),
		Stream:             str("HERALD_STREAM", events.DefaultStream),
		SubjectPrefix:      str("HERALD_SUBJECT_PREFIX", events.DefaultSubjectPrefix),
		Consumer:           str("HERALD_CONSUMER", events.DefaultConsumer),
		StreamMaxAge:       dur("HERALD_STREAM_MAX_AGE", 0), // unset: 7 days for a new stream, an existing one's kept
		BatchSize:          num("HERALD_BATCH_SIZE", 500),
		Concurrency:        num("HERALD_CONCURRENCY", 2*runtime.GOMAXPROCS(0)),
		BatchWait:          dur("HERALD_BATCH_WAIT", 10*time.Millisecond),
		MaxEventDepth:      num("HERALD_MAX_EVENT_DEPTH", 3),
		MaxPayload:         num("HERALD_MAX_PAYLOAD", 1<<20),
		MaxAttempts:        num("HERALD_MAX_ATTEMPTS", 10),
		AckWait:            dur("HERALD_ACK_WAIT", 60*time.Second),
		DeliveryAttempts:   num("HERALD_DELIVERY_MAX_ATTEMPTS", 6),
		DeliveryMinBackoff: dur("HERALD_DELIVERY_MIN_BACKOFF", 15*time.Second),
		DeliveryMaxBackoff: dur("HERALD_DELIVERY_MAX_BACKOFF", time.Hour),
		WebhookTimeout:     dur("HERALD_WEBHOOK_TIMEOUT", 30*time.Second),
		HTTPAddr:           str("HERALD_HTTP_ADDR", "127.0.0.1:9464"),
		ShutdownTimeout:    dur("HERALD_SHUTDOWN_TIMEOUT", 25*time.Second),
		AutoMigrate:        boolean("HERALD_AUTO_MIGRATE", true),
		LogFormat:          str("HERALD_LOG_FORMAT", "text"),
	}
	if v := getenv("HERALD_LOG_LEVEL"); v != "" {
		if err := c.LogLevel.UnmarshalText([]byte(v)); err != nil {
			errs = append(errs, fmt.Errorf("HERALD_LOG_LEVEL=%q: want debug, info, warn or error", v))
		}
	}

	if fs != nil {
		fs.StringVar(&c.DatabaseURL, "database-url", c.DatabaseURL, "PostgreSQL URL (DATABASE_URL)")
		fs.StringVar(&c.NATSURL, "nats-url", c.NATSURL, "NATS URL; empty starts an embedded JetStream server (NATS_URL)")
		fs.StringVar(&c.Stream, "stream", c.Stream, "JetStream stream (HERALD_STREAM)")
		fs.StringVar(&c.SubjectPrefix, "subject-prefix", c.SubjectPrefix, "subject prefix (HERALD_SUBJECT_PREFIX)")
		fs.StringVar(&c.Consumer, "consumer", c.Consumer, "durable consumer name (HERALD_CONSUMER)")
		fs.StringVar(&c.DataDir, "data-dir", c.DataDir, "data directory for the embedded server and mail files (HERALD_DATA_DIR)")
		if err := fs.Parse(args); err != nil {
			return c, err
		}
	}

	if c.HTTPAddr == "off" {
		c.HTTPAddr = ""
	}
	if c.BatchSize < 1 {
		errs = append(errs, errors.New("HERALD_BATCH_SIZE must be at least 1"))
	}
	if c.Concurrency < 1 {
		errs = append(errs, errors.New("HERALD_CONCURRENCY must be at least 1"))
	}
	// The stream's duplicate window (2 minutes) must fit in its age.
	// Zero is refused too, rather than read as "unset" (values that do not
	// parse are reported above).
	if d, err := time.ParseDuration(getenv("HERALD_STREAM_MAX_AGE")); err == nil && d >= 0 && d < 2*time.Minute {
		errs = append(errs, errors.New("HERALD_STREAM_MAX_AGE must be at least 2m"))
	}
	if c.MaxEventDepth < 1 {
		errs = append(errs, errors.New("HERALD_MAX_EVENT_DEPTH must be at least 1"))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"HERALD_ACK_WAIT", c.AckWait}, {"HERALD_WEBHOOK_TIMEOUT", c.WebhookTimeout},
		{"HERALD_DELIVERY_MIN_BACKOFF", c.DeliveryMinBackoff}, {"HERALD_DELIVERY_MAX_BACKOFF", c.DeliveryMaxBackoff},
		{"HERALD_SHUTDOWN_TIMEOUT", c.ShutdownTimeout},
	} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive", d.name))
		}
	}
	for _, n := range []struct {
		name string
		v    int
	}{{"HERALD_MAX_PAYLOAD", c.MaxPayload}, {"HERALD_MAX_ATTEMPTS", c.MaxAttempts}, {"HERALD_DELIVERY_MAX_ATTEMPTS", c.DeliveryAttempts}} {
		if n.v < 1 {
			errs = append(errs, fmt.Errorf("%s must be at least 1", n.name))
		}
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		errs = append(errs, fmt.Errorf("HERALD_LOG_FORMAT=%q: want text or json", c.LogFormat))
	}
	if isURLDSN(c.DatabaseURL) {
		if _, err := url.Parse(c.DatabaseURL); err != nil {
			errs = append(errs, fmt.Errorf("DATABASE_URL: %w", withoutURL(err)))
		}
	}
	return c, errors.Join(errs...)
}

// embeddedURL is where the embedded NATS server listens for clients.
func (c config) embeddedURL() string { return "nats://" + c.EmbeddedNATSListen }

func (c config) logger(stderr io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.LogLevel}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(stderr, opts))
	}
	return slog.New(slog.NewTextHandler(stderr, opts))
}
