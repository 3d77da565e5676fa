package rules

import (
	"context"
	"fmt"

	"github.com/jmoiron/sqlx"
)

// LocalTransport carries out the local deliveries whose transport has a
// body mapping, as authentik's send_local: the mapping runs with the
// notification, and what it sets of the notification's body, severity,
// hyperlink and hyperlink_label is stored; its return value is discarded.
// Local deliveries without a mapping are sent when their batch writes them
// and never reach a transport.
type LocalTransport struct {
	DB       *sqlx.DB
	Mappings MappingEvaluator
}

var _ Transporter = (*LocalTransport)(nil)

// Deliver implements [Transporter]. The notification's new fields and the
// delivery's sent status are written by one statement, fenced by the
// attempt, so that a mapping's change is stored exactly once.
func (l *LocalTransport) Deliver(ctx context.Context, d *Delivery) (DeliveryResult, error) {
	id := d.Transport.WebhookMappingBodyID
	if id == nil {
		return DeliveryResult{}, nil // the notification row is the inbox entry
	}
	res, err := runMapping(ctx, l.DB, l.Mappings, d, *id)
	if err != nil {
		return DeliveryResult{}, err
	}
	n, err := mappedNotification(d, res.Notification)
	if err != nil {
		return DeliveryResult{}, &PermanentError{Err: err}
	}
	_, err = l.DB.ExecContext(ctx, `WITH sent AS (
    UPDATE deliveries SET status = 'sent', sent_at = now(), last_error = '', updated = now()
    WHERE id = $1 AND status = 'sending' AND attempts = $2
    RETURNING notification_id)
UPDATE notifications SET body = $3, severity = $4, hyperlink = $5, hyperlink_label = $6
FROM sent WHERE notifications.id = sent.notification_id`,
		d.ID, d.Attempts, n.body, n.severity, n.hyperlink, n.hyperlinkLabel)
	if err != nil {
		return DeliveryResult{}, fmt.Errorf("store mapped notification: %w", err)
	}
	return DeliveryResult{}, nil
}

// mappedFields are the fields of a notification that a local mapping may
// change.
type mappedFields struct {
	body, severity            string
	hyperlink, hyperlinkLabel *string
}

// mappedNotification reads the fields a mapping may change from the
// notification it left (nil: the mapping replaced it with something that
// is not an object, which changes nothing).
func mappedNotification(d *Delivery, n map[string]any) (mappedFields, error) {
	out := mappedFields{body: d.Body, severity: d.Severity, hyperlink: d.Hyperlink, hyperlinkLabel: d.HyperlinkLabel}
	if n == nil {
		return out, nil
	}
	if v, ok := n["body"]; ok {
		s, isString := v.(string)
		if !isString {
			return out, fmt.Errorf("mapping set notification.body to %s, want a string", describe(v))
		}
		out.body = s
	}
	if v, ok := n["severity"]; ok {
		s, _ := v.(string)
		switch s {
		case "notice", "warning", "alert":
			out.severity = s
		default:
			return out, fmt.Errorf("mapping set notification.severity to %s, want \"notice\", \"warning\" or \"alert\"", describe(v))
		}
	}
	for key, field := range map[string]**string{"hyperlink": &out.hyperlink, "hyperlink_label": &out.hyperlinkLabel} {
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
