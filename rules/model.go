package rules

import (
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Policy kinds.
const (
	KindExpression   = "expression"
	KindEventMatcher = "event_matcher"
)

// Transport modes.
const (
	ModeLocal        = "local"
	ModeWebhook      = "webhook"
	ModeWebhookSlack = "webhook_slack"
	ModeEmail        = "email"
)

// Policy is a row of policies: a JavaScript expression or an event matcher.
type Policy struct {
	ID               string  `db:"id"`
	Name             string  `db:"name"`
	Kind             string  `db:"kind"`
	Expression       string  `db:"expression"`
	MatchAction      *string `db:"match_action"`
	MatchApp         *string `db:"match_app"`
	MatchModel       *string `db:"match_model"`
	MatchClientIP    *string `db:"match_client_ip"`
	ExecutionLogging bool    `db:"execution_logging"`

	// guardActions, when not nil, are the only actions for which the
	// expression does anything but return a falsy value straight away
	// (see [ActionGuard]).
	guardActions []string
}

// ActionGuard reads an expression policy and returns the only event actions
// for which it can do anything but return a falsy value straight away,
// without side effects or errors; nil when it cannot tell. Rules whose
// policies all have such actions are skipped for other events without
// evaluating anything. [jsrt.Pool.ActionGuard] implements it.
type ActionGuard func(p *Policy) []string

// Binding is an enabled row of policy_bindings that targets a rule. Exactly
// one of Policy, GroupID and UserID is set.
type Binding struct {
	ID             string  `db:"id"`
	RuleID         string  `db:"target_rule_id"`
	PolicyID       *string `db:"policy_id"`
	GroupID        *string `db:"group_id"`
	UserID         *int64  `db:"user_id"`
	Order          int     `db:"order"`
	Negate         bool    `db:"negate"`
	TimeoutSeconds int     `db:"timeout_seconds"`
	FailureResult  bool    `db:"failure_result"`

	Policy *Policy `db:"-"`
}

// Timeout is the binding's evaluation time limit.
func (b *Binding) Timeout() time.Duration {
	return time.Duration(max(b.TimeoutSeconds, 1)) * time.Second
}

// Transport is a row of notification_transports.
type Transport struct {
	ID                      string  `db:"id"`
	Name                    string  `db:"name"`
	Mode                    string  `db:"mode"`
	SendOnce                bool    `db:"send_once"`
	WebhookURL              string  `db:"webhook_url"`
	WebhookMappingBodyID    *string `db:"webhook_mapping_body_id"`
	WebhookMappingHeadersID *string `db:"webhook_mapping_headers_id"`
	EmailSubjectPrefix      string  `db:"email_subject_prefix"`
	EmailTemplate           string  `db:"email_template"`
}

// Rule is an enabled notification rule with its enabled bindings in
// ascending order and its transports.
type Rule struct {
	ID                   string  `db:"id"`
	Name                 string  `db:"name"`
	Severity             string  `db:"severity"`
	DestinationGroupID   *string `db:"destination_group_id"`
	DestinationEventUser bool    `db:"destination_event_user"`

	Bindings   []*Binding   `db:"-"`
	Transports []*Transport `db:"-"`

	// actions, when not nil, are the only actions the rule can fire for
	// (see index); other events skip it without evaluating anything.
	actions map[string]bool
}

// CanMatch reports whether an event with action may make the rule fire or
// cause a side effect; false means evaluating it would do nothing.
func (r *Rule) CanMatch(action string) bool {
	return r.actions == nil || r.actions[action]
}

// index works out which actions the rule can fire for: when every binding
// is an event matcher with match_action set, or an expression policy with
// guard actions, with no negate and no execution logging, only those
// actions. A rule without bindings never fires.
func (r *Rule) index() {
	r.actions = map[string]bool{}
	for _, b := range r.Bindings {
		p := b.Policy
		if p == nil || b.Negate || p.ExecutionLogging {
			r.actions = nil
			return
		}
		switch {
		case p.Kind == KindEventMatcher && p.MatchAction != nil:
			r.actions[*p.MatchAction] = true
		case p.Kind == KindExpression && p.guardActions != nil:
			for _, a := range p.guardActions {
				r.actions[a] = true
			}
		default:
			r.actions = nil
			return
		}
	}
}

// User is a row of users.
type User struct {
	ID          int64      `db:"id"`
	UUID        string     `db:"uuid"`
	Username    string     `db:"username"`
	Name        string     `db:"name"`
	Email       string     `db:"email"`
	IsActive    bool       `db:"is_active"`
	IsSuperuser bool       `db:"is_superuser"`
	Attributes  JSONMap    `db:"attributes"`
	LastLogin   *time.Time `db:"last_login"`
	Created     time.Time  `db:"created"`
	Updated     time.Time  `db:"updated"`
}

// userFromRow is the User of a users row, its columns scanned as [Find]
// scans the User model's fields, in their order.
func userFromRow(vals []any) (*User, error) {
	var bad error
	m := Models["User"]
	col := func(name string) int { return m.fieldIndex(name) }
	u := &User{
		ID:          scanned[int64](vals, col("id"), &bad),
		UUID:        string(scanned[[]byte](vals, col("uuid"), &bad)),
		Username:    scanned[string](vals, col("username"), &bad),
		Name:        scanned[string](vals, col("name"), &bad),
		Email:       scanned[string](vals, col("email"), &bad),
		IsActive:    scanned[bool](vals, col("is_active"), &bad),
		IsSuperuser: scanned[bool](vals, col("is_superuser"), &bad),
		Created:     scanned[time.Time](vals, col("created"), &bad),
		Updated:     scanned[time.Time](vals, col("updated"), &bad),
	}
	if v := vals[col("last_login")]; v != nil {
		lastLogin := scanned[time.Time](vals, col("last_login"), &bad)
		u.LastLogin = &lastLogin
	}
	if bad != nil {
		return nil, fmt.Errorf("users row: %w", bad)
	}
	if err := u.Attributes.Scan(vals[col("attributes")]); err != nil {
		return nil, err
	}
	return u, nil
}

// scanned is vals[i] as a T; a value of another type is reported in *bad.
func scanned[T any](vals []any, i int, bad *error) T {
	v, ok := vals[i].(T)
	if !ok && *bad == nil {
		*bad = fmt.Errorf("column %d is a %T", i, vals[i])
	}
	return v
}

// EventUser is the user dict that authentik stores in events for u
// (its get_user).
func (u *User) EventUser() map[string]any {
	if u == nil {
		return map[string]any{"pk": nil, "username": "AnonymousUser", "email": "", "is_anonymous": true}
	}
	return map[string]any{"pk": u.ID, "username": u.Username, "email": u.Email}
}

// JSONMap is a jsonb object column.
type JSONMap map[string]any

// Scan implements sql.Scanner.
func (m *JSONMap) Scan(src any) error {
	var b []byte
	switch t := src.(type) {
	case nil:
		*m = JSONMap{}
		return nil
	case []byte:
		b = t
	case string:
		b = []byte(t)
	default:
		return fmt.Errorf("scan jsonb: unsupported type %T", src)
	}
	out := JSONMap{}
	if err := json.Unmarshal(b, (*map[string]any)(&out)); err != nil {
		return fmt.Errorf("scan jsonb: %w", err)
	}
	*m = out
	return nil
}

// Value implements driver.Valuer.
func (m JSONMap) Value() (driver.Value, error) {
	if m == nil {
		return "{}", nil
	}
	b, err := json.Marshal(map[string]any(m))
	if err != nil {
		return nil, fmt.Errorf("encode jsonb: %w", err)
	}
	return string(b), nil
}

// ErrNotFound is returned when a looked-up row does not exist.
var ErrNotFound = errors.New("rules: not found")

// UserMap is u as plain data, the shape of a User model object.
func UserMap(u *User) map[string]any {
	if u == nil {
		return map[string]any{"pk": nil, "username": "AnonymousUser", "name": "", "email": "", "is_anonymous": true, "attributes": map[string]any{}}
	}
	var lastLogin any
	if u.LastLogin != nil {
		lastLogin = u.LastLogin.UTC().Format(time.RFC3339Nano)
	}
	return map[string]any{
		"pk": u.ID, "id": u.ID, "uuid": u.UUID, "username": u.Username, "name": u.Name, "email": u.Email,
		"is_active": u.IsActive, "is_superuser": u.IsSuperuser, "is_anonymous": false,
		"attributes": map[string]any(u.Attributes), "last_login": lastLogin,
		"created": u.Created.UTC().Format(time.RFC3339Nano), "updated": u.Updated.UTC().Format(time.RFC3339Nano),
	}
}
