package events

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
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
	// MaxAge is how long events stay in the stream (zero: 7 days for a
	// new stream, unchanged for an existing one).
	MaxAge time.Duration
	// Replicas for a clustered JetStream (zero: 1 for a new stream,
	// unchanged for an existing one).
	Replicas int
	// DuplicateWindow over which Nats-Msg-Id de-duplicates (zero: 2
	// minutes for a new stream, unchanged for an existing one).
	DuplicateWindow time.Duration
}

func (c StreamConfig) withDefaults() StreamConfig {
	if c.Name == "" {
		c.Name = DefaultStream
	}
	if c.SubjectPrefix == "" {
		c.SubjectPrefix = DefaultSubjectPrefix
	}
	return c
}

// EnsureStream creates the events stream with file storage when it does
// not exist (MaxAge 7 days, one replica and a 2 minute duplicate window
// unless cfg sets them). A stream that exists keeps the settings it has
// (replicas and limits an operator set included), but for those cfg sets
// and for its subjects: when none covers SubjectPrefix.>, that is added, in
// place of those it covers. It is updated only when one of those differs.
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.Stream, error) {
	cfg = cfg.withDefaults()
	subject := cfg.SubjectPrefix + ".>"
	s, err := js.Stream(ctx, cfg.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		sc := jetstream.StreamConfig{
			Name:       cfg.Name,
			Subjects:   []string{subject},
			Storage:    jetstream.FileStorage,
			Retention:  jetstream.LimitsPolicy,
			MaxAge:     cmp.Or(cfg.MaxAge, 7*24*time.Hour),
			Replicas:   cmp.Or(cfg.Replicas, 1),
			Duplicates: cmp.Or(cfg.DuplicateWindow, 2*time.Minute),
		}
		if s, err = js.CreateStream(ctx, sc); err == nil || !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			if err != nil {
				return nil, fmt.Errorf("create stream %s: %w", cfg.Name, err)
			}
			return s, nil
		}
		s, err = js.Stream(ctx, cfg.Name) // created meanwhile by another worker
	}
	if err != nil {
		return nil, fmt.Errorf("look up stream %s: %w", cfg.Name, err)
	}
	sc := s.CachedInfo().Config
	changed := false
	if !slices.ContainsFunc(sc.Subjects, func(have string) bool { return subjectCovers(have, subject) }) {
		// Subjects within ours give way to it (the server refuses
		// overlapping ones).
		sc.Subjects = slices.DeleteFunc(slices.Clone(sc.Subjects), func(have string) bool { return subjectCovers(subject, have) })
		sc.Subjects, changed = append(sc.Subjects, subject), true
	}
	set := func(field *time.Duration, v time.Duration) {
		if v != 0 && *field != v {
			*field, changed = v, true
		}
	}
	set(&sc.MaxAge, cfg.MaxAge)
	set(&sc.Duplicates, cfg.DuplicateWindow)
	if cfg.Replicas != 0 && sc.Replicas != cfg.Replicas {
		sc.Replicas, changed = cfg.Replicas, true
	}
	if !changed {
		return s, nil
	}
	if s, err = js.UpdateStream(ctx, sc); err != nil {
		return nil, fmt.Errorf("update stream %s: %w", cfg.Name, err)
	}
	return s, nil
}

// subjectCovers reports whether every subject that matches pattern q also
// matches pattern p ("*" matches one token, a final ">" one or more).
func subjectCovers(p, q string) bool {
	pt, qt := strings.Split(p, "."), strings.Split(q, ".")
	for i, t := range pt {
		switch {
		case t == ">":
			return i < len(qt)
		case i >= len(qt):
			return false
		case t == "*":
			if qt[i] == ">" {
				return false
			}
		case t != qt[i]:
			return false
		}
	}
	return len(pt) == len(qt)
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

// ErrDuplicate is returned (wrapped) by [Publisher.PublishRaw] when the
// stream already holds a message with the event's pk, published within its
// duplicate window: this one was dropped.
var ErrDuplicate = errors.New("a message with this pk is already in the stream")

// PublishRaw sends an already encoded event.
func (p *Publisher) PublishRaw(ctx context.Context, pk, action string, data []byte) error {
	if pk == "" {
		return errors.New("publish event: empty pk")
	}
	ack, err := p.js.Publish(ctx, Subject(p.prefix, action), data, jetstream.WithMsgID(pk))
	if err != nil {
		return fmt.Errorf("publish event %s: %w", pk, err)
	}
	if ack.Duplicate {
		return fmt.Errorf("publish event %s: %w", pk, ErrDuplicate)
	}
	return nil
}
