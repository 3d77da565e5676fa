package events

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// StreamConfig names the stream and how long it keeps events.
type StreamConfig struct {
	// Name of the stream. Defaults to [DefaultStream].
	Name string
	// SubjectPrefix; the stream holds SubjectPrefix + ".>". Defaults to
	// [DefaultSubjectPrefix].
	SubjectPrefix string
	// MaxAge is how long events stay in the stream. Defaults to 7 days.
	MaxAge time.Duration
	// Replicas for a clustered JetStream. Defaults to 1.
	Replicas int
	// DuplicateWindow over which Nats-Msg-Id de-duplicates. Defaults to 2 minutes.
	DuplicateWindow time.Duration
}

func (c StreamConfig) withDefaults() StreamConfig {
	if c.Name == "" {
		c.Name = DefaultStream
	}
	if c.SubjectPrefix == "" {
		c.SubjectPrefix = DefaultSubjectPrefix
	}
	if c.MaxAge == 0 {
		c.MaxAge = 7 * 24 * time.Hour
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.DuplicateWindow == 0 {
		c.DuplicateWindow = 2 * time.Minute
	}
	return c
}

// EnsureStream creates the events stream, or updates its settings when it
// exists already. It uses file storage.
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.Stream, error) {
	cfg = cfg.withDefaults()
	sc := jetstream.StreamConfig{
		Name:       cfg.Name,
		Subjects:   []string{cfg.SubjectPrefix + ".>"},
		Storage:    jetstream.FileStorage,
		Retention:  jetstream.LimitsPolicy,
		MaxAge:     cfg.MaxAge,
		Replicas:   cfg.Replicas,
		Duplicates: cfg.DuplicateWindow,
	}
	s, err := js.CreateOrUpdateStream(ctx, sc)
	if err != nil {
		return nil, fmt.Errorf("create stream %s: %w", cfg.Name, err)
	}
	return s, nil
}

// Publisher publishes events to the stream. It is safe for concurrent use.
type Publisher struct {
	js     jetstream.JetStream
	prefix string
}

// NewPublisher returns a Publisher for subjects under prefix (the default
// prefix when empty).
func NewPublisher(js jetstream.JetStream, prefix string) *Publisher {
	if prefix == "" {
		prefix = DefaultSubjectPrefix
	}
	return &Publisher{js: js, prefix: prefix}
}

// Publish sends ev on its subject with Nats-Msg-Id set to ev.PK, and waits
// for the stream to store it.
func (p *Publisher) Publish(ctx context.Context, ev Event) error {
	data, err := ev.MarshalJSON()
	if err != nil {
		return fmt.Errorf("encode event %s: %w", ev.PK, err)
	}
	return p.PublishRaw(ctx, ev.PK, ev.Action, data)
}

// PublishRaw sends an already encoded event.
func (p *Publisher) PublishRaw(ctx context.Context, pk, action string, data []byte) error {
	if pk == "" {
		return errors.New("publish event: empty pk")
	}
	if _, err := p.js.Publish(ctx, Subject(p.prefix, action), data, jetstream.WithMsgID(pk)); err != nil {
		return fmt.Errorf("publish event %s: %w", pk, err)
	}
	return nil
}
