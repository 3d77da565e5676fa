package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jmoiron/sqlx"

	"github.com/heraldhq/herald/mailer"
	"github.com/heraldhq/herald/rules"
)

// emailSender carries out the emails that policies queued (ak_send_email):
// it renders the template, if any, and sends through the mailer.
func emailSender(db *sqlx.DB, m *mailer.Mailer) rules.OutboxSender {
	return rules.OutboxSenderFunc(func(ctx context.Context, key string, payload []byte) error {
		var e rules.Email
		if err := json.Unmarshal(payload, &e); err != nil {
			return &undeliverable{fmt.Errorf("decode queued email %s: %w", key, err)}
		}
		msg := mailer.Message{Key: e.Key, To: e.To, Cc: e.Cc, Bcc: e.Bcc, Subject: e.Subject, Text: e.Body}
		if e.Template != "" {
			tpl := mailer.EventNotification
			if e.Template != rules.BuiltinEmailTemplate {
				row, err := rules.LoadEmailTemplate(ctx, db, e.Template)
				if errors.Is(err, rules.ErrNotFound) {
					return &undeliverable{fmt.Errorf("email template %q does not exist", e.Template)}
				}
				if err != nil {
					return err
				}
				tpl = mailer.Template{Name: row.Name, Subject: row.Subject, HTML: row.HTML, Text: row.Text}
			}
			_, html, text, err := mailer.Render(tpl, e.Context)
			if err != nil {
				return &undeliverable{err}
			}
			msg.HTML, msg.Text = html, text
		}
		return m.Send(ctx, msg)
	})
}

// undeliverable marks an email that no retry can send.
type undeliverable struct{ err error }

func (u *undeliverable) Error() string { return u.err.Error() }
func (u *undeliverable) Unwrap() error { return u.err }

// permanentMailError reports outbox failures not worth retrying.
func permanentMailError(err error) bool {
	var u *undeliverable
	return errors.As(err, &u) || mailer.Permanent(err)
}
