package rules

import (
	"context"

	"github.com/jmoiron/sqlx"

	"github.com/heraldhq/herald/events"
)

// Hooks into unexported parts, for the tests of package rules_test.

// PolicyTx is policyTx.
type PolicyTx = policyTx

func NewPolicyTx(db *sqlx.DB, tx *sqlx.Tx) *PolicyTx {
	return &policyTx{Tx: tx, stmts: newStmtCache(db)}
}

func (t *policyTx) Settle(ctx context.Context) error { return t.settle(ctx) }

func (t *policyTx) ReleasePending() bool { return t.releasePending }

func NewPolicyScope(t *PolicyTx) *Scope { return &Scope{tx: t} }

func (s *Scope) Finish(ctx context.Context, failed bool) error { return s.finish(ctx, failed) }

const ReleaseSavepoint = releaseSavepoint

func (t *policyTx) Prepared() int { return len(t.prepared) }

// WriteNotifications writes, through the batch writer, a notification and
// a local delivery for each of evs.
func WriteNotifications(ctx context.Context, tx *sqlx.Tx, evs []events.Event, ruleID, transportID string, userID int64) error {
	w := &batchWriter{}
	for i := range evs {
		id := derivedUUID(evs[i].PK, ruleID, "1")
		w.notifications = append(w.notifications, pendingNotification{id: id, ruleID: ruleID, eventID: evs[i].PK, userID: userID, severity: "notice", body: Summary(&evs[i])})
		w.deliveries = append(w.deliveries, pendingDelivery{notificationID: id, transportID: transportID, status: DeliverySent})
	}
	return w.flush(ctx, tx)
}

// NewOptimisticPolicyTx is the policyTx of an optimistic batch.
func NewOptimisticPolicyTx(db *sqlx.DB, tx *sqlx.Tx) *PolicyTx {
	return &policyTx{Tx: tx, stmts: newStmtCache(db), optimistic: true}
}

func (t *policyTx) QueuedSaves() int { return len(t.saves) }

// Next is a policyTx for the next batch, sharing t's prepared statements.
func (t *policyTx) Next(tx *sqlx.Tx) *PolicyTx { return &policyTx{Tx: tx, stmts: t.stmts} }

// StoredJSON is storedJSON.
func StoredJSON(b []byte) []byte { return storedJSON(b) }

// TextArray is textArray.
type TextArray = textArray

// LoadUsers is loadUsers.
func (e *Engine) LoadUsers(ctx context.Context, t *PolicyTx, evs []*events.Event) (map[int64]*User, error) {
	return e.loadUsers(ctx, t, evs)
}

const MaxBatchRows = maxBatchRows
