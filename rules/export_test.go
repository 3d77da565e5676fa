package rules

import (
	"context"

	"github.com/jmoiron/sqlx"
)

// Hooks into unexported parts, for the tests of package rules_test.

// PolicyTx is policyTx.
type PolicyTx = policyTx

func NewPolicyTx(tx *sqlx.Tx) *PolicyTx { return &policyTx{Tx: tx} }

func (t *policyTx) Settle(ctx context.Context) error { return t.settle(ctx) }

func (t *policyTx) ReleasePending() bool { return t.releasePending }

func NewPolicyScope(t *PolicyTx) *Scope { return &Scope{tx: t} }

func (s *Scope) Finish(ctx context.Context, failed bool) error { return s.finish(ctx, failed) }

const ReleaseSavepoint = releaseSavepoint

func (t *policyTx) Prepared() int { return len(t.prepared) }
