package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	netmail "net/mail"
	"strings"

	"github.com/jmoiron/sqlx"

	"github.com/heraldhq/herald/mailer"
	"github.com/heraldhq/herald/rules"
)

// emailSender carries out the emails that policies queued (ak_send_email):
// it renders the template, if any, and sends through the mailer. A sent
// email records an email_sent event, caused by the event whose policy
// queued it.
func emailSender(db *sqlx.DB, m *mailer.Mailer, from string) rules.OutboxSender {
	return rules.OutboxSenderFunc(func(ctx context.Context, key string, payload []byte) (*rules.OutcomeEvent, error) {
		var e rules.Email
		if err := json.Unmarshal(payload, &e); err != nil {
			return nil, &undeliverable{fmt.Errorf("decode queued email %s: %w", key, err)}
		}
		msg := mailer.Message{Key: e.Key, To: e.To, Cc: e.Cc, Bcc: e.Bcc, Subject: e.Subject, Text: e.Body}
		if e.Template != "" {
			tpl := mailer.EventNotification
			if e.Template != rules.BuiltinEmailTemplate {
				row, err := rules.LoadEmailTemplate(ctx, db, e.Template)
				if errors.Is(err, rules.ErrNotFound) {
					return nil, &undeliverable{fmt.Errorf("email template %q does not exist", e.Template)}
				}
				if err != nil {
					return nil, err
				}
				tpl = mailer.Template{Name: row.Name, Subject: row.Subject, HTML: row.HTML, Text: row.Text}
			}
			_, html, text, err := mailer.Render(tpl, e.Context)
			if err != nil {
				return nil, &undeliverable{err}
			}
			msg.HTML, msg.Text = html, text
		}
		if err := m.Send(ctx, msg); err != nil {
			return nil, err
		}
		sent := emailSent(msg, e.To, from)
		sent.Cause = e.Cause
		return sent, nil
	})
}

// emailSent is the email_sent event authentik's send_mail records for a
// sent message: its body is the HTML part when there is one, else the text.
func emailSent(msg mailer.Message, to []string, from string) *rules.OutcomeEvent {
	toEmail := make([]any, len(to))
	for i, a := range to {
		toEmail[i] = a
	}
	return &rules.OutcomeEvent{
		Action: "email_sent", App: "authentik.stages.email.tasks", User: map[string]any{},
		Context: map[string]any{
			"message":    "Email to " + strings.Join(to, ", ") + " sent",
			"subject":    msg.Subject,
			"body":       cmp.Or(msg.HTML, msg.Text),
			"from_email": from,
			"to_email":   toEmail,
		},
	}
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

// emailTransport delivers the email transport mode: the transport's
// template (or the built-in one) to the recipient's address, with
// authentik's subject and template data. A successful send records an
// email_sent event.
type emailTransport struct {
	db   *sqlx.DB
	mail *mailer.Mailer
	from string
}

var _ rules.Transporter = (*emailTransport)(nil)

func (t *emailTransport) Deliver(ctx context.Context, d *rules.Delivery) (rules.DeliveryResult, error) {
	address := strings.TrimSpace(d.User.Email)
	if address == "" {
		return rules.DeliveryResult{Skipped: true, Note: "user " + d.User.Username + " has no email address"}, nil
	}
	tpl, err := t.template(ctx, d.Transport.EmailTemplate)
	if err != nil {
		return rules.DeliveryResult{}, err
	}
	data := rules.EmailTemplateData(d)
	rendered, html, text, err := mailer.Render(tpl, data)
	if err != nil {
		return rules.DeliveryResult{}, &rules.PermanentError{Err: err}
	}
	// The template's subject (the built-in one's is the title), after the
	// transport's prefix; the title when it renders empty.
	title, _ := data["title"].(string)
	subject := d.Transport.EmailSubjectPrefix + cmp.Or(rendered, title)
	to := (&netmail.Address{Name: d.User.Name, Address: address}).String()
	msg := mailer.Message{Key: "delivery:" + d.ID, To: []string{to}, Subject: subject, HTML: html, Text: text}
	if err := t.mail.Send(ctx, msg); err != nil {
		if mailer.Permanent(err) {
			return rules.DeliveryResult{}, &rules.PermanentError{Err: err}
		}
		return rules.DeliveryResult{}, err
	}
	// The email went out: its email_sent event is stored with the
	// delivery's sent status.
	return rules.DeliveryResult{Event: emailSent(msg, []string{address}, t.from)}, nil
}

// template returns the named template: a row of email_templates, or the
// built-in event_notification (also for authentik's default name).
func (t *emailTransport) template(ctx context.Context, name string) (mailer.Template, error) {
	switch name {
	case "", rules.BuiltinEmailTemplate, "email/event_notification.html":
		return mailer.EventNotification, nil
	}
	row, err := rules.LoadEmailTemplate(ctx, t.db, name)
	if errors.Is(err, rules.ErrNotFound) {
		return mailer.Template{}, &rules.PermanentError{Err: fmt.Errorf("email template %q does not exist", name)}
	}
	if err != nil {
		return mailer.Template{}, err
	}
	return mailer.Template{Name: row.Name, Subject: row.Subject, HTML: row.HTML, Text: row.Text}, nil
}
