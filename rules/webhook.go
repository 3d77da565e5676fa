package rules

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jmoiron/sqlx"

	"github.com/heraldhq/herald/events"
)

// MappingEvaluator runs webhook mapping expressions. Package jsrt
// implements it.
type MappingEvaluator interface {
	EvaluateMapping(ctx context.Context, m MappingRequest) (MappingResult, error)
}

// MappingResult is what a mapping expression returned, and the
// notification as it left it.
type MappingResult struct {
	Value        any
	Notification map[string]any
}

// MappingRequest is one evaluation of a webhook mapping.
type MappingRequest struct {
	Name, Expression string
	Notification     map[string]any
	User             *User // the recipient
	Event            *events.Event
	Timeout          time.Duration
	// Scope is what the mapping's model queries and helpers read (see
	// [NewReadScope]); nil: they throw.
	Scope *Scope
}

// WebhookTransport delivers the webhook and webhook_slack modes with
// authentik's payloads.
type WebhookTransport struct {
	DB       *sqlx.DB
	Mappings MappingEvaluator
	// Client defaults to an http.Client with Timeout.
	Client *http.Client
	// Timeout bounds one POST. Defaults to 30s.
	Timeout time.Duration
	// UserAgent defaults to "herald".
	UserAgent string
	// Slack selects the Slack/Discord attachment format.
	Slack bool
}

var _ Transporter = (*WebhookTransport)(nil)

// Deliver implements [Transporter].
func (w *WebhookTransport) Deliver(ctx context.Context, d *Delivery) (DeliveryResult, error) {
	if d.Transport.WebhookURL == "" {
		return DeliveryResult{}, &PermanentError{fmt.Errorf("transport %q has no webhook_url", d.Transport.Name)}
	}
	var (
		body    any
		headers = map[string]string{}
		err     error
	)
	if w.Slack {
		body = SlackBody(d)
	} else {
		body, headers, err = w.mapped(ctx, d)
		if err != nil {
			return DeliveryResult{}, err
		}
	}
	payload, err := json.Marshal(body)
	if err != nil {
		return DeliveryResult{}, &PermanentError{fmt.Errorf("encode webhook body: %w", err)}
	}
	return DeliveryResult{}, w.post(ctx, d, payload, headers)
}

func (w *WebhookTransport) post(ctx context.Context, d *Delivery, payload []byte, headers map[string]string) error {
	timeout := w.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	client := w.Client
	if client == nil {
		client = &http.Client{Timeout: timeout}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.Transport.WebhookURL, bytes.NewReader(payload))
	if err != nil {
		return &PermanentError{fmt.Errorf("webhook request: %w", withoutURL(err))}
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	if req.Header.Get("Content-Type") == "" { // a mapping may set its own
		req.Header.Set("Content-Type", "application/json")
	}
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", orDefault(w.UserAgent, "herald"))
	}
	// The same key on every attempt lets the receiver drop repeats.
	req.Header.Set("Idempotency-Key", d.ID)
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("POST %s: %w", webhookHost(d.Transport.WebhookURL), withoutURL(err))
	}
	defer resp.Body.Close()
	text, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	// As authentik's raise_for_status: a final 1xx or 3xx is no failure.
	if resp.StatusCode >= 400 {
		return fmt.Errorf("HTTP %d from %s: %s", resp.StatusCode, webhookHost(d.Transport.WebhookURL), strings.TrimSpace(string(text)))
	}
	return nil
}

// webhookHost names a webhook in errors by its scheme and host: its user
// information and, for Slack and Discord, its path are secrets.
func webhookHost(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "the webhook URL"
	}
	return u.Scheme + "://" + u.Host
}

// withoutURL is err without the URL that net/http and net/url write into
// their messages, for the reason given at [webhookHost].
func withoutURL(err error) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return uerr.Err
	}
	return err
}

// mapped returns the webhook body and headers: authentik's default body,
// or what the transport's mapping expressions return.
func (w *WebhookTransport) mapped(ctx context.Context, d *Delivery) (any, map[string]string, error) {
	headers := map[string]string{}
	var body any = DefaultWebhookBody(d)
	if id := d.Transport.WebhookMappingBodyID; id != nil {
		v, err := w.runMapping(ctx, d, *id)
		if err != nil {
			return nil, nil, err
		}
		body = events.Sanitize(v) // as authentik's sanitize_item: no falsy list items, no NUL
	}
	if id := d.Transport.WebhookMappingHeadersID; id != nil {
		v, err := w.runMapping(ctx, d, *id)
		if err != nil {
			return nil, nil, err
		}
		m, ok := events.Sanitize(v).(map[string]any)
		if v != nil && !ok {
			return nil, nil, fmt.Errorf("headers mapping returned %T, want an object", v)
		}
		for k, x := range m {
			switch x := x.(type) {
			case nil: // no header, as requests leaves out None
			case string:
				headers[k] = x
			case map[string]any, []any:
				return nil, nil, fmt.Errorf("headers mapping: header %q is %T, want a string", k, x)
			default:
				headers[k] = fmt.Sprint(x)
			}
		}
	}
	return body, headers, nil
}

// runMapping evaluates one mapping. A failing expression records a
// property_mapping_exception event (as authentik does, on every attempt)
// and fails the delivery, which is then retried.
func (w *WebhookTransport) runMapping(ctx context.Context, d *Delivery, id string) (any, error) {
	m, err := loadMapping(ctx, w.DB, id)
	if err != nil {
		return nil, err
	}
	ctx, release := pinRuntime(ctx, w.Mappings)
	defer release()
	// The mapping reads (users, groups, …) in a read-only transaction of
	// its own.
	tx, err := w.DB.BeginTxx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("begin mapping transaction: %w", err)
	}
	res, err := m.evaluate(ctx, w.Mappings, d, NewReadScope(tx))
	_ = tx.Rollback() // read-only: nothing to keep
	if err != nil {
		return nil, m.failed(ctx, w.DB, d, err)
	}
	return res.Value, nil
}

// webhookMapping is a row of webhook_mappings.
type webhookMapping struct {
	Name       string `db:"name"`
	Expression string `db:"expression"`
}

func loadMapping(ctx context.Context, db sqlx.QueryerContext, id string) (webhookMapping, error) {
	var m webhookMapping
	if err := sqlx.GetContext(ctx, db, &m, `SELECT name, expression FROM webhook_mappings WHERE id = $1`, id); err != nil {
		return m, fmt.Errorf("load webhook mapping %s: %w", id, err)
	}
	return m, nil
}

// pinRuntime dedicates a runtime of mappings to ctx (see [Binder]) before
// a mapping's transaction begins, so that the transaction, and the locks it
// takes, are not held while the mapping waits for a runtime.
func pinRuntime(ctx context.Context, mappings MappingEvaluator) (context.Context, func()) {
	if b, ok := mappings.(Binder); ok {
		return b.Bind(ctx)
	}
	return ctx, func() {}
}

// evaluate runs the mapping for delivery d, its model reads in scope.
func (m webhookMapping) evaluate(ctx context.Context, mappings MappingEvaluator, d *Delivery, scope *Scope) (MappingResult, error) {
	return mappings.EvaluateMapping(ctx, MappingRequest{
		Name: m.Name, Expression: m.Expression, Notification: NotificationMap(d), User: &d.User, Event: d.Event,
		Timeout: 30 * time.Second, Scope: scope,
	})
}

// failed records the mapping's failure for delivery d as a
// property_mapping_exception event and returns the delivery's error.
func (m webhookMapping) failed(ctx context.Context, db *sqlx.DB, d *Delivery, err error) error {
	c := map[string]any{
		"message":    "Failed to execute property mapping",
		"mapping":    m.Name,
		"expression": m.Expression,
		"exception":  err.Error(),
		"delivery":   d.ID,
	}
	if cerr := CreateEventAfter(ctx, db, d.Event, "property_mapping_exception", "authentik.core.expression.evaluator",
		d.User.EventUser(), c, fmt.Sprintf("%s/%d", d.ID, d.Attempts)); cerr != nil {
		return fmt.Errorf("mapping %q: %w (and recording it: %v)", m.Name, err, cerr)
	}
	return fmt.Errorf("mapping %q: %w", m.Name, err)
}

// NotificationMap is the notification as mappings see it.
func NotificationMap(d *Delivery) map[string]any {
	n := map[string]any{
		"pk": d.NotificationID, "severity": d.Severity, "body": d.Body,
		"hyperlink": derefOr(d.Hyperlink), "hyperlink_label": derefOr(d.HyperlinkLabel),
		"user": UserMap(&d.User), "rule": d.RuleName,
	}
	if d.Event != nil {
		var ev map[string]any
		if b, err := d.Event.MarshalJSON(); err == nil && json.Unmarshal(b, &ev) == nil {
			// The properties of authentik's Event a mapping reads.
			ev["summary"] = Summary(d.Event)
			ev["hyperlink"] = d.Event.Context["hyperlink"]
			ev["hyperlink_label"] = d.Event.Context["hyperlink_label"]
			n["event"] = ev
		}
	}
	return n
}

func derefOr(s *string) any {
	if s == nil {
		return nil
	}
	return *s
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// DefaultWebhookBody is authentik's default webhook payload.
func DefaultWebhookBody(d *Delivery) map[string]any {
	b := map[string]any{
		"body":          d.Body,
		"severity":      d.Severity,
		"user_email":    d.User.Email,
		"user_username": d.User.Username,
	}
	if d.Event != nil && len(d.Event.User) > 0 {
		b["event_user_email"] = d.Event.User["email"]
		b["event_user_username"] = d.Event.User["username"]
	}
	return b
}

// slackFieldLimit is Discord's limit on attachment fields, which authentik
// applies to both Slack and Discord.
const slackFieldLimit = 25

// SlackBody is authentik's Slack/Discord attachment payload.
func SlackBody(d *Delivery) map[string]any {
	title := d.Body
	if d.Event != nil {
		title = d.Event.Action
	}
	fields := []any{
		map[string]any{"title": "Severity", "value": d.Severity, "short": true},
		map[string]any{"title": "Dispatched for user", "value": d.User.Username, "short": true},
	}
	if d.Event != nil {
		if u, ok := d.Event.User["username"].(string); ok {
			fields = append(fields, map[string]any{"title": "Event user", "value": u, "short": true})
		}
		for _, k := range slackFieldKeys(d.Event.Context) {
			if len(fields) >= slackFieldLimit {
				break
			}
			if s, ok := d.Event.Context[k].(string); ok {
				fields = append(fields, map[string]any{"title": cut(k, 256), "value": cut(s, 1024)})
			}
		}
	}
	return map[string]any{
		"username": "herald",
		"attachments": []any{map[string]any{
			"author_name": "herald",
			"title":       title,
			"color":       "#fd4b2d",
			"fields":      fields,
			"footer":      "herald",
		}},
	}
}

// slackFieldKeys orders the context keys for the Slack fields: authentik
// takes them in the context's own order, which neither a Go map nor jsonb
// keeps, so "message" (an event's summary, usually first) comes first and
// the others follow in sorted order.
func slackFieldKeys(c map[string]any) []string {
	keys := sortedKeys(c)
	if i := slices.Index(keys, "message"); i > 0 {
		copy(keys[1:i+1], keys[:i])
		keys[0] = "message"
	}
	return keys
}

// cut shortens s to n runes.
func cut(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n])
}
