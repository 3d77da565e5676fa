package rules

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/heraldhq/herald/events"
)

// insertEvents stores a batch of consumed events in one statement. An
// event Herald created itself is stored unprocessed; consuming it marks it
// processed. Only the rows inserted or marked are returned.
const insertEvents = `INSERT INTO events (id, action, app, "user", context, client_ip, created, brand, extra, processed)
SELECT t.id::uuid, t.action, t.app, t.u::jsonb, t.c::jsonb, NULLIF(t.ip, '')::inet, t.cr::timestamptz, t.b::jsonb, t.x::jsonb, true
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[])
    AS t(id, action, app, u, c, ip, cr, b, x)
ON CONFLICT (id) DO UPDATE SET processed = true WHERE NOT events.processed
RETURNING id`

// StoreEvents stores consumed events and returns those seen for the first
// time, in their batch order (an event repeated within the batch counts
// once). Events stored before (a redelivery or a re-publish) are left out:
// nothing more is done for them.
func StoreEvents(ctx context.Context, tx *sqlx.Tx, evs []events.Event) ([]*events.Event, error) {
	n := len(evs)
	cols := make([][]string, 9)
	for i := range cols {
		cols[i] = make([]string, 0, n)
	}
	seen := make(map[string]bool, n)
	unique := make([]*events.Event, 0, n)
	for i := range evs {
		ev := &evs[i]
		if seen[ev.PK] {
			continue
		}
		seen[ev.PK] = true
		unique = append(unique, ev)
		// Objects that decoding left as they came are stored as they came.
		rawUser, rawContext, rawBrand := ev.StoredJSON()
		user, err := storedObject(rawUser, ev.User)
		if err != nil {
			return nil, fmt.Errorf("encode user of event %s: %w", ev.PK, err)
		}
		c, err := storedObject(rawContext, ev.Context)
		if err != nil {
			return nil, fmt.Errorf("encode context of event %s: %w", ev.PK, err)
		}
		brand, err := storedObject(rawBrand, ev.Brand)
		if err != nil {
			return nil, fmt.Errorf("encode brand of event %s: %w", ev.PK, err)
		}
		extra := "{}"
		if len(ev.Extra) > 0 {
			b, err := json.Marshal(ev.Extra)
			if err != nil {
				return nil, fmt.Errorf("encode extra keys of event %s: %w", ev.PK, err)
			}
			extra = string(b)
		}
		cols[0] = append(cols[0], ev.PK)
		cols[1] = append(cols[1], ev.Action)
		cols[2] = append(cols[2], ev.App)
		cols[3] = append(cols[3], user)
		cols[4] = append(cols[4], c)
		cols[5] = append(cols[5], ev.ClientIP)
		cols[6] = append(cols[6], ev.Created.UTC().Format(time.RFC3339Nano))
		cols[7] = append(cols[7], brand)
		cols[8] = append(cols[8], extra)
	}
	args := make([]any, len(cols))
	for i, c := range cols {
		args[i] = textArray(c)
	}
	var ids []string
	if err := tx.SelectContext(ctx, &ids, insertEvents, args...); err != nil {
		return nil, fmt.Errorf("insert %d events: %w", len(unique), err)
	}
	stored := make(map[string]bool, len(ids))
	for _, id := range ids {
		stored[id] = true
	}
	fresh := make([]*events.Event, 0, len(ids))
	for _, ev := range unique {
		if stored[ev.PK] {
			fresh = append(fresh, ev)
		}
	}
	return fresh, nil
}

// storedObject is raw when set, else m encoded.
func storedObject(raw []byte, m map[string]any) (string, error) {
	if raw != nil {
		return string(raw), nil
	}
	return marshalObject(m)
}

func marshalObject(m map[string]any) (string, error) {
	if len(m) == 0 {
		return "{}", nil
	}
	b, err := json.Marshal(m)
	return string(b), err
}

// batchWriter collects the notifications and deliveries of a batch and
// writes them in one statement each.
type batchWriter struct {
	notifications []pendingNotification
	deliveries    []pendingDelivery
	// outbox counts the outbox entries queued (some may have been undone
	// with a failed policy).
	outbox int
	stats  batchStats
}

// committed describes the batch for [EngineConfig.AfterCommit].
func (w *batchWriter) committed(evs []events.Event) Committed {
	c := Committed{Events: evs, Outbox: w.outbox}
	for _, d := range w.deliveries {
		if d.status == DeliveryPending {
			c.Deliveries++
		}
	}
	return c
}

type pendingNotification struct {
	id, ruleID, eventID       string
	userID                    int64
	severity, body            string
	hyperlink, hyperlinkLabel string
}

type pendingDelivery struct {
	notificationID, transportID, status string
}

// insertNotifications writes a batch's notifications and their deliveries
// in one statement (the deliveries' foreign keys are checked at its end).
// Rules and transports deleted since the rule set was loaded are skipped,
// as authentik skips a rule that is gone, rather than failing the batch
// until the next reload.
const insertNotifications = `WITH notified AS (
    INSERT INTO notifications (id, rule_id, event_id, user_id, severity, body, hyperlink, hyperlink_label)
    SELECT t.id, t.rule_id, t.event_id, t.user_id, t.severity, t.body, NULLIF(t.link, ''), NULLIF(t.label, '')
    FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[])
        AS t(id, rule_id, event_id, user_id, severity, body, link, label)
    WHERE EXISTS (SELECT 1 FROM notification_rules r WHERE r.id = t.rule_id)
    ON CONFLICT (event_id, rule_id, user_id) DO NOTHING
    RETURNING id
)
INSERT INTO deliveries (notification_id, transport_id, status, sent_at)
SELECT d.nid, d.tid, d.status, CASE WHEN d.status = 'sent' THEN now() END
FROM unnest($9::uuid[], $10::uuid[], $11::text[]) AS d(nid, tid, status)
WHERE EXISTS (SELECT 1 FROM notification_transports tr WHERE tr.id = d.tid)
    AND (d.nid IN (SELECT id FROM notified) OR EXISTS (SELECT 1 FROM notifications n WHERE n.id = d.nid))
ON CONFLICT (notification_id, transport_id) DO NOTHING`

func (w *batchWriter) flush(ctx context.Context, tx *sqlx.Tx) error {
	n, m := len(w.notifications), len(w.deliveries)
	if n == 0 && m == 0 {
		return nil
	}
	ids, rules, evs, sev, body, link, label := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	users := make([]int64, n)
	for i, p := range w.notifications {
		ids[i], rules[i], evs[i], users[i] = p.id, p.ruleID, p.eventID, p.userID
		sev[i], body[i], link[i], label[i] = p.severity, p.body, p.hyperlink, p.hyperlinkLabel
	}
	nids, tids, status := make([]string, m), make([]string, m), make([]string, m)
	for i, d := range w.deliveries {
		nids[i], tids[i], status[i] = d.notificationID, d.transportID, d.status
	}
	if _, err := tx.ExecContext(ctx, insertNotifications, textArray(ids), textArray(rules), textArray(evs),
		pq.Int64Array(users), textArray(sev), textArray(body), textArray(link), textArray(label),
		textArray(nids), textArray(tids), textArray(status)); err != nil {
		return fmt.Errorf("insert %d notifications and %d deliveries: %w", n, m, err)
	}
	return nil
}
