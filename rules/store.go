package rules

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/jmoiron/sqlx"

	"github.com/heraldhq/herald/events"
)

var sqlTxReadOnlySnapshot = sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true}

// ConnectionParams are the lib/pq connection parameters Herald adds to a
// database URL that does not set them: binary_parameters lets a query with
// parameters go out in one round trip instead of two (parse, then bind).
var ConnectionParams = map[string]string{"binary_parameters": "yes"}

// WithConnectionParams adds [ConnectionParams] to a URL-form dsn (other
// forms are returned unchanged).
func WithConnectionParams(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return dsn
	}
	q := u.Query()
	for k, v := range ConnectionParams {
		if q.Get(k) == "" {
			q.Set(k, v)
		}
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// Store is the PostgreSQL side of the worker that is not per event:
// dead letters and inbox reads.
type Store struct {
	db *sqlx.DB
}

// NewStore returns a Store on db.
func NewStore(db *sqlx.DB) *Store { return &Store{db: db} }

var _ events.DeadLetterStore = (*Store)(nil)

// StoreDeadLetter implements [events.DeadLetterStore]. NUL characters,
// which PostgreSQL's text and jsonb cannot hold, are dropped from the
// subject, headers and reason (the payload is kept byte for byte): a dead
// letter that could not be stored would be redelivered for ever.
func (s *Store) StoreDeadLetter(ctx context.Context, dl events.DeadLetter) error {
	clean := make(map[string][]string, len(dl.Headers))
	for k, vs := range dl.Headers {
		out := make([]string, len(vs))
		for i, v := range vs {
			out[i] = storableText(v)
		}
		clean[storableText(k)] = out
	}
	headers, err := json.Marshal(clean)
	if err != nil {
		return fmt.Errorf("encode dead letter headers: %w", err)
	}
	var seq *int64
	if dl.StreamSeq > 0 {
		v := int64(dl.StreamSeq)
		seq = &v
	}
	payload := dl.Payload
	if payload == nil {
		payload = []byte{}
	}
	_, err = s.db.ExecContext(ctx,
		`INSERT INTO dead_letters (subject, payload, headers, reason, stream_seq) VALUES ($1, $2, $3, $4, $5)`,
		storableText(dl.Subject), payload, string(headers), storableText(dl.Reason), seq)
	if err != nil {
		return fmt.Errorf("insert dead letter: %w", err)
	}
	return nil
}

const insertCreated = `INSERT INTO events (id, action, app, "user", context, client_ip, created, brand, extra, processed)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, false)
ON CONFLICT (id) DO NOTHING`

const insertOutbox = `INSERT INTO outbox (key, kind, payload) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING`

// insertCreatedEvent stores an event Herald creates and queues its publication.
func insertCreatedEvent(ctx context.Context, tx *sqlx.Tx, ev *events.Event) error {
	args, err := eventArgs(ev)
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, insertCreated, args...); err != nil {
		return fmt.Errorf("insert created event %s: %w", ev.PK, err)
	}
	payload, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("encode created event %s: %w", ev.PK, err)
	}
	if _, err := tx.ExecContext(ctx, insertOutbox, "event:"+ev.PK, OutboxEvent, string(payload)); err != nil {
		return fmt.Errorf("queue created event %s: %w", ev.PK, err)
	}
	return nil
}

func eventArgs(ev *events.Event) ([]any, error) {
	user, err := json.Marshal(orEmpty(ev.User))
	if err != nil {
		return nil, fmt.Errorf("encode event user: %w", err)
	}
	evCtx, err := json.Marshal(orEmpty(ev.Context))
	if err != nil {
		return nil, fmt.Errorf("encode event context: %w", err)
	}
	brand, err := json.Marshal(orEmpty(ev.Brand))
	if err != nil {
		return nil, fmt.Errorf("encode event brand: %w", err)
	}
	extra := []byte("{}")
	if len(ev.Extra) > 0 {
		if extra, err = json.Marshal(ev.Extra); err != nil {
			return nil, fmt.Errorf("encode event extra keys: %w", err)
		}
	}
	var ip *string
	if ev.ClientIP != "" {
		ip = &ev.ClientIP
	}
	// jsonb values go as text: []byte would be sent as binary data with
	// binary_parameters (see [ConnectionParams]).
	return []any{ev.PK, ev.Action, ev.App, string(user), string(evCtx), ip, ev.Created, string(brand), string(extra)}, nil
}

func orEmpty(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	return m
}

const selectUser = `SELECT id, uuid, username, name, email, is_active, is_superuser, attributes,
       last_login, created, updated
FROM users WHERE id = $1`

// LoadUser returns the users row with id, or ErrNotFound.
func LoadUser(ctx context.Context, q sqlx.QueryerContext, id int64) (*User, error) {
	var u User
	err := sqlx.GetContext(ctx, q, &u, selectUser, id)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, ErrNotFound
	case err != nil:
		return nil, fmt.Errorf("load user %d: %w", id, err)
	}
	return &u, nil
}

// selectUserGroupIDs returns the groups a user is a direct member of and all
// their ancestors.
const selectUserGroupIDs = `WITH RECURSIVE g(id, parent_id) AS (
    SELECT gr.id, gr.parent_id FROM groups gr JOIN group_members m ON m.group_id = gr.id WHERE m.user_id = $1
  UNION
    SELECT p.id, p.parent_id FROM groups p JOIN g ON p.id = g.parent_id
)
SELECT id FROM g`

// UserGroupIDs returns the ids of the groups user id belongs to, directly
// or through a descendant group.
func UserGroupIDs(ctx context.Context, q sqlx.QueryerContext, id int64) (map[string]bool, error) {
	var ids []string
	if err := sqlx.SelectContext(ctx, q, &ids, selectUserGroupIDs, id); err != nil {
		return nil, fmt.Errorf("load groups of user %d: %w", id, err)
	}
	set := make(map[string]bool, len(ids))
	for _, g := range ids {
		set[g] = true
	}
	return set, nil
}

// UserHasAuthenticator reports whether user id has a confirmed
// authenticator device, of the given kind when kind is not empty.
func UserHasAuthenticator(ctx context.Context, q sqlx.QueryerContext, id int64, kind string) (bool, error) {
	var ok bool
	err := sqlx.GetContext(ctx, q, &ok, `SELECT EXISTS (SELECT 1 FROM authenticator_devices
WHERE user_id = $1 AND confirmed AND ($2 = '' OR kind = $2))`, id, kind)
	if err != nil {
		return false, fmt.Errorf("look up authenticators of user %d: %w", id, err)
	}
	return ok, nil
}

// EmailTemplate is a row of email_templates.
type EmailTemplate struct {
	Name    string `db:"name"`
	Subject string `db:"subject"`
	HTML    string `db:"html"`
	Text    string `db:"text"`
}

// LoadEmailTemplate returns the email_templates row name, or ErrNotFound.
func LoadEmailTemplate(ctx context.Context, q sqlx.QueryerContext, name string) (*EmailTemplate, error) {
	var t EmailTemplate
	err := sqlx.GetContext(ctx, q, &t, `SELECT name, subject, html, text FROM email_templates WHERE name = $1`, name)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, ErrNotFound
	case err != nil:
		return nil, fmt.Errorf("load email template %q: %w", name, err)
	}
	return &t, nil
}

// storableText is s as a PostgreSQL text column takes it: invalid UTF-8
// becomes U+FFFD and NUL bytes are dropped.
func storableText(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "")
}
