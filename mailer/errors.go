package mailer

import (
	"errors"

	"github.com/wneessen/go-mail"
)

// invalidError reports a message that can never be sent as it is: no key,
// no recipient, a malformed address, no body.
type invalidError struct{ err error }

func (e *invalidError) Error() string { return e.err.Error() }
func (e *invalidError) Unwrap() error { return e.err }

func invalid(err error) error { return &invalidError{err: err} }

// Permanent reports whether err will fail again on retry: the message itself
// is invalid (no key, no recipient, a malformed address, no body), or the
// SMTP server rejected it with a 5xx reply to MAIL FROM, RCPT TO or DATA
// (for example 550 no such user, 554 rejected). go-mail's
// [*mail.SendError] says which replies are temporary (IsTemp).
//
// Temporary failures are not permanent: the server is unreachable or the
// connection breaks (connection refused, a timeout, a closed connection),
// a 4xx reply, a cancelled context, an error writing the file backend.
// Failures while setting up the session (greeting, STARTTLS, AUTH) are
// treated as temporary too: they concern the server or its configuration,
// not this message, and the message goes through once they are fixed.
//
// Permanent(nil) is false.
func Permanent(err error) bool {
	if err == nil {
		return false
	}
	var inv *invalidError
	if errors.As(err, &inv) {
		return true
	}
	var se *mail.SendError
	if !errors.As(err, &se) || se.IsTemp() {
		return false
	}
	switch se.Reason {
	case mail.ErrGetSender, mail.ErrGetRcpts, mail.ErrNoUnencoded:
		// The message has no usable sender or recipients, or needs 8BITMIME
		// that the server lacks: it fails the same way every time.
		return true
	case mail.ErrSMTPMailFrom, mail.ErrSMTPRcptTo, mail.ErrSMTPData, mail.ErrSMTPDataClose:
		// A 5xx reply is permanent (RFC 5321 §4.2.1); a broken connection has
		// no reply code and is worth a retry.
		return se.ErrorCode() >= 500
	default:
		return false
	}
}
