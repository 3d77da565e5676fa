package main

import (
	"errors"
	"net/url"
	"regexp"
	"strings"
)

// redacted stands for a password or token that is not shown.
const redacted = "xxxxx"

// urlFreeError is an error whose text has the URL that a *url.Error in it
// repeats (password included) left out.
type urlFreeError struct {
	msg string
	err error
}

func (e *urlFreeError) Error() string { return e.msg }
func (e *urlFreeError) Unwrap() error { return e.err }

// withoutURL returns err with the text of the *url.Error in its chain, if
// any, reduced to the cause, the way the mailer reports an SMTP_URL that
// does not parse: url.Error repeats the whole URL, password included.
func withoutURL(err error) error {
	var uerr *url.Error
	if !errors.As(err, &uerr) {
		return err
	}
	msg := strings.ReplaceAll(err.Error(), uerr.Error(), uerr.Op+" URL: "+uerr.Err.Error())
	return &urlFreeError{msg: msg, err: err}
}

// isURLDSN reports whether lib/pq reads dsn as a URL (otherwise it is a
// keyword/value connection string such as "host=db password=…").
func isURLDSN(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

var (
	// keywordPassword is the password of a keyword/value dsn: quoted (with
	// backslash escapes) or up to the next space.
	keywordPassword = regexp.MustCompile(`(^|\s)password\s*=\s*('(\\.|[^'\\])*'?|(\\.|\S)*)`)
	// queryPassword is a password given as a URL parameter.
	queryPassword = regexp.MustCompile(`([?&]password=)[^&#]*`)
)

// redactDSN hides the password of a dsn of either form: a URL's user
// password and password parameter, and a keyword/value string's password.
// A URL that does not parse loses all of its user information.
func redactDSN(dsn string) string {
	if !isURLDSN(dsn) {
		return keywordPassword.ReplaceAllString(dsn, "${1}password="+redacted)
	}
	dsn = queryPassword.ReplaceAllString(dsn, "${1}"+redacted)
	u, err := url.Parse(dsn)
	if err != nil {
		scheme, rest, _ := strings.Cut(dsn, "://")
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			rest = redacted + rest[at:]
		}
		return scheme + "://" + rest
	}
	return u.Redacted()
}

// redactNATSURL hides the passwords and tokens in a NATS URL, or in a
// comma-separated list of them (NATS_URL may name several servers).
func redactNATSURL(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		at := strings.LastIndex(p, "@")
		if at < 0 {
			continue
		}
		start := 0
		if j := strings.Index(p[:at], "://"); j >= 0 {
			start = j + len("://")
		}
		user, _, hasPassword := strings.Cut(p[start:at], ":")
		if hasPassword {
			user += ":" + redacted
		} else {
			user = redacted // a token
		}
		parts[i] = p[:start] + user + p[at:]
	}
	return strings.Join(parts, ",")
}
