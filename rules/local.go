package rules

import (
	"context"
	"errors"
	"fmt"

	"github.com/jmoiron/sqlx"
)

// LocalTransport carries out the local deliveries whose transport has a
// body mapping, as authentik's send_local: the mapping runs with the
// notification, and what it sets of the notification's body, severity,
// hyperlink and hyperlink_label is stored; its return value is discarded.
// Local deliveries without a mapping are sent when their batch writes them
// and never reach a transport.
//
// The notification row is shared by the rule's transports: the first
// mapping that changes it keeps the rule's values in its unmapped column,
// which the rule's webhook, Slack and email transports send, as each of
// authentik's transports gets a notification of its own. Local transports
// share the row: a second local mapping runs on what the first left.
type LocalTransport struct {
	DB       *sqlx.DB
	Mappings MappingEvaluator
}

var _ Transporter = (*LocalTransport)(nil)

// ErrLeaseLost reports a delivery whose lease ran out while it was carried
// out: a newer claim owns it, and its outcome is not recorded.
var ErrLeaseLost = errors.New("rules: the delivery's lease ran out; a newer claim carries it out")

// Deliver implements [Transporter]. In one transaction it locks the
// notification (two local transports of a rule change it one after the
// other), runs the mapping on it as it is, and stores the change with the
// delivery's sent status, fenced by the attempt, so that a change is
// stored exactly once.
func (l *LocalTransport) Deliver(ctx context.Context, d *Delivery) (DeliveryResult, error) {
	id := d.Transport.WebhookMappingBodyID
	if id == nil {
		return DeliveryResult{}, nil // the notification row is the inbox entry
	}
	m, err := loadMapping(ctx, l.DB, *id)
	if err != nil {
		return DeliveryResult{}, err
	}
	ctx, release := pinRuntime(ctx, l.Mappings)
	defer release()
	tx, err := l.DB.BeginTxx(ctx, nil)
	if err != nil {
		return DeliveryResult{}, fmt.Errorf("begin local delivery: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	var cur mappedFields
	if err := tx.GetContext(ctx, &cur, `SELECT body, severity, hyperlink, hyperlink_label FROM notifications
WHERE id = $1 FOR NO KEY UPDATE`, d.NotificationID); err != nil {
		return DeliveryResult{}, fmt.Errorf("lock notification %s: %w", d.NotificationID, err)
	}
	d.Body, d.Severity, d.Hyperlink, d.HyperlinkLabel = cur.Body, cur.Severity, cur.Hyperlink, cur.HyperlinkLabel
	scope := NewReadScope(tx)
	res, err := m.evaluate(ctx, l.Mappings, d, scope)
	if err != nil {
		_ = tx.Rollback()
		return DeliveryResult{}, m.failed(ctx, l.DB, d, err)
	}
	n, err := mappedNotification(cur, res.Notification)
	if err != nil {
		return DeliveryResult{}, &PermanentError{Err: err}
	}
	if scope.savepoint {
		// The mapping's queries set its timeouts on the transaction.
		if _, err := tx.ExecContext(ctx, defaultTimeouts); err != nil {
			return DeliveryResult{}, fmt.Errorf("reset timeouts: %w", err)
		}
	}
	sent, err := tx.ExecContext(ctx, `UPDATE deliveries SET status = 'sent', sent_at = now(), last_error = '', updated = now()
WHERE id = $1 AND status = 'sending' AND attempts = $2`, d.ID, d.Attempts)
	if err != nil {
		return DeliveryResult{}, fmt.Errorf("record local delivery: %w", err)
	}
	if rows, err := sent.RowsAffected(); err != nil || rows == 0 {
		return DeliveryResult{}, ErrLeaseLost
	}
	if !n.equal(cur) {
		if _, err := tx.ExecContext(ctx, `UPDATE notifications SET body = $2, severity = $3, hyperlink = $4, hyperlink_label = $5,
    unmapped = coalesce(unmapped, jsonb_build_object('body', body, 'severity', severity, 'hyperlink', hyperlink, 'hyperlink_label', hyperlink_label))
WHERE id = $1`, d.NotificationID, n.Body, n.Severity, n.Hyperlink, n.HyperlinkLabel); err != nil {
			return DeliveryResult{}, fmt.Errorf("store mapped notification: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return DeliveryResult{}, fmt.Errorf("commit local delivery: %w", err)
	}
	return DeliveryResult{}, nil
}

// mappedFields are the fields of a notification that a local mapping may
// change.
type mappedFields struct {
	Body           string  `db:"body"`
	Severity       string  `db:"severity"`
	Hyperlink      *string `db:"hyperlink"`
	HyperlinkLabel *string `db:"hyperlink_label"`
}

func (f mappedFields) equal(g mappedFields) bool {
	return f.Body == g.Body && f.Severity == g.Severity &&
		equalStrings(f.Hyperlink, g.Hyperlink) && equalStrings(f.HyperlinkLabel, g.HyperlinkLabel)
}

func equalStrings(a, b *string) bool {
	return a == b || a != nil && b != nil && *a == *b
}

// mappedNotification is cur with what the mapping set in the notification
// it left (nil: the mapping replaced it with something that is not an
// object, which changes nothing).
func mappedNotification(cur mappedFields, n map[string]any) (mappedFields, error) {
	out := cur
	if n == nil {
		return out, nil
	}
	if v, ok := n["body"]; ok {
		s, isString := v.(string)
		if !isString {
			return out, fmt.Errorf("mapping set notification.body to %s, want a string", describe(v))
		}
		out.Body = s
	}
	if v, ok := n["severity"]; ok {
		s, _ := v.(string)
		switch s {
		case "notice", "warning", "alert":
			out.Severity = s
		default:
			return out, fmt.Errorf("mapping set notification.severity to %s, want \"notice\", \"warning\" or \"alert\"", describe(v))
		}
	}
	for key, field := range map[string]**string{"hyperlink": &out.Hyperlink, "hyperlink_label": &out.HyperlinkLabel} {
		v, ok := n[key]
		if !ok {
			continue
		}
		switch s := v.(type) {
		case nil:
			*field = nil
		case string:
			*field = &s
		default:
			return out, fmt.Errorf("mapping set notification.%s to %s, want a string or null", key, describe(v))
		}
	}
	return out, nil
}
