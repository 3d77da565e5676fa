package rules

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/heraldhq/herald/events"
)

// Delivery statuses.
const (
	DeliveryPending = "pending"
	DeliverySending = "sending"
	DeliverySent    = "sent"
	DeliveryFailed  = "failed"
	DeliveryDead    = "dead"
	DeliverySkipped = "skipped"
)

// fanOut queues the notifications and deliveries of a fired rule: for
// each transport, in order, one delivery per destination user (only the
// first with send_once). It returns how many deliveries it queued.
func (r *eventRun) fanOut(ctx context.Context, rule *Rule) (int, error) {
	if len(rule.Transports) == 0 {
		return 0, nil
	}
	users, err := r.destinationUsers(ctx, rule)
	if err != nil {
		return 0, err
	}
	body := Summary(r.ev)
	link, _ := r.ev.Context["hyperlink"].(string)
	label, _ := r.ev.Context["hyperlink_label"].(string)
	notified := make(map[int64]string, len(users))
	n := 0
	for _, t := range rule.Transports {
		for _, uid := range users {
			nid, ok := notified[uid]
			if !ok {
				nid = derivedUUID(r.ev.PK, rule.ID, fmt.Sprint(uid))
				notified[uid] = nid
				r.out.notifications = append(r.out.notifications, pendingNotification{
					id: nid, ruleID: rule.ID, eventID: r.ev.PK, userID: uid,
					severity: rule.Severity, body: body, hyperlink: link, hyperlinkLabel: label,
				})
				r.out.stats.notifications++
			}
			status := DeliveryPending
			if t.Mode == ModeLocal && t.WebhookMappingBodyID == nil {
				// The notification row is the inbox entry. A body
				// mapping, which may change it, runs in the dispatcher
				// (see [LocalTransport]).
				status = DeliverySent
			}
			r.out.deliveries = append(r.out.deliveries, pendingDelivery{notificationID: nid, transportID: t.ID, status: status})
			n++
			if t.SendOnce {
				break
			}
		}
	}
	return n, nil
}

const selectGroupMembers = `SELECT user_id FROM group_members WHERE group_id = $1 ORDER BY user_id`

// destinationUsers returns the event's user (when the rule asks for it and
// the user exists) followed by the direct members of the destination group,
// without repeats.
func (r *eventRun) destinationUsers(ctx context.Context, rule *Rule) ([]int64, error) {
	var users []int64
	if rule.DestinationEventUser && r.user != nil {
		users = append(users, r.user.ID)
	}
	if rule.DestinationGroupID != nil {
		var members []int64
		tx, err := r.db(ctx)
		if err != nil {
			return nil, err
		}
		if err := tx.SelectContext(ctx, &members, selectGroupMembers, *rule.DestinationGroupID); err != nil {
			return nil, fmt.Errorf("load members of destination group: %w", err)
		}
		for _, m := range members {
			if !slices.Contains(users, m) {
				users = append(users, m)
			}
		}
	}
	return users, nil
}

// Summary is a notification's body for ev, as authentik's event.summary:
// context.message when present, else "<action>: <context as JSON>".
func Summary(ev *events.Event) string {
	if m, ok := ev.Context["message"]; ok {
		if s, ok := m.(string); ok {
			return s
		}
		return compactJSON(m)
	}
	return ev.Action + ": " + compactJSON(orEmpty(ev.Context))
}

// compactJSON encodes v without HTML escaping (the body is text, not HTML).
func compactJSON(v any) string {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return fmt.Sprint(err)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
