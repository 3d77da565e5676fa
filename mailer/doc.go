// Package mailer sends Herald's email: it turns a [Message] into an RFC 5322
// message with go-mail and hands it to an SMTP server, or, when no SMTP
// server is configured, writes it as an .eml file (the file backend), so a
// message is never dropped. It also renders email templates ([Template],
// [Render], and the built-in [EventNotification]).
//
// # Backends
//
// [Config.SMTPURL] chooses the backend:
//
//	smtp://[user:pass@]host[:port][?tls=...&skip_verify=true&timeout=10s&auth=...]
//	smtps://[user:pass@]host[:port][?...]
//
// smtp:// defaults to port 25 and tls=opportunistic (STARTTLS when the server
// offers it, plain text otherwise); tls=starttls requires STARTTLS, tls=none
// never uses TLS, and tls=tls (or the smtps:// scheme) means implicit TLS,
// port 465 by default. With a user name, Herald authenticates with the
// strongest mechanism the server offers (SCRAM-SHA-256, SCRAM-SHA-1,
// CRAM-MD5, PLAIN, LOGIN); PLAIN and LOGIN are used only over TLS or to
// localhost. An empty SMTPURL selects the file backend, which writes each
// message to [Config.Dir].
//
// # Idempotency
//
// Every [Message] carries a Key, the caller's idempotency key (for example
// event, rule, user and transport). The Message-ID header is derived from
// it, so a resend after a crash or a redelivery carries the same Message-ID
// and mail systems can drop the duplicate; the file backend names the file
// after it, so a resend overwrites the earlier file instead of adding one.
//
// # Errors
//
// [Permanent] tells a message that can never be delivered as it is (an
// invalid address, an SMTP 5xx rejection of the message) from a failure
// worth retrying (the server is unreachable, a 4xx reply, a timeout).
//
// A [Mailer] is safe for concurrent use. The package imports only the
// standard library and go-mail.
package mailer
