package jsrt

import (
	"context"

	"github.com/heraldhq/herald/rules"
)

var _ rules.MappingEvaluator = (*Pool)(nil)

// EvaluateMapping implements [rules.MappingEvaluator]: it runs a webhook
// mapping expression with `notification`, `user` (the recipient) and
// `request` ({user, context: {notification}}) and returns its result and
// the notification as it left it, as JSON data.
func (p *Pool) EvaluateMapping(ctx context.Context, m rules.MappingRequest) (rules.MappingResult, error) {
	notification := m.Notification
	req := &rules.PolicyRequest{
		Policy:  &rules.Policy{Name: m.Name, Expression: m.Expression, Kind: rules.KindExpression},
		Event:   m.Event,
		User:    m.User,
		Timeout: m.Timeout,
		Scope:   m.Scope,
		Context: map[string]any{"notification": notification},
		Globals: map[string]any{"notification": notification, "user": m.User},
	}
	res := p.Evaluate(ctx, req)
	if res.Err != nil {
		return rules.MappingResult{}, res.Err
	}
	if res.Retry != nil {
		return rules.MappingResult{}, res.Retry
	}
	n, _ := res.Globals["notification"].(map[string]any)
	return rules.MappingResult{Value: res.Raw, Notification: n}, nil
}
