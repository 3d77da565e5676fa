package mailer

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/wneessen/go-mail"
)

// tlsMode is how the SMTP connection is secured.
type tlsMode string

const (
	tlsNone          tlsMode = "none"          // never TLS
	tlsOpportunistic tlsMode = "opportunistic" // STARTTLS when offered
	tlsStartTLS      tlsMode = "starttls"      // STARTTLS required
	tlsImplicit      tlsMode = "tls"           // TLS from the first byte (smtps)
)

// smtpTarget is a parsed SMTP URL.
type smtpTarget struct {
	scheme     string // smtp or smtps
	host       string
	port       int
	tls        tlsMode
	skipVerify bool
	user, pass string
	auth       mail.SMTPAuthType // "" means the opportunistic list
	timeout    time.Duration     // 0 means Config.Timeout
}

// addr is host:port.
func (s *smtpTarget) addr() string { return net.JoinHostPort(s.host, strconv.Itoa(s.port)) }

// authTypes maps the auth= option to go-mail's mechanisms.
var authTypes = map[string]mail.SMTPAuthType{
	"plain":         mail.SMTPAuthPlain,
	"login":         mail.SMTPAuthLogin,
	"cram-md5":      mail.SMTPAuthCramMD5,
	"scram-sha-1":   mail.SMTPAuthSCRAMSHA1,
	"scram-sha-256": mail.SMTPAuthSCRAMSHA256,
	"xoauth2":       mail.SMTPAuthXOAUTH2,
}

// parseSMTPURL parses and validates an SMTP URL. Its errors never contain
// the password.
func parseSMTPURL(raw string) (*smtpTarget, error) {
	u, err := url.Parse(raw)
	// A /, ? or # in an unescaped password ends the authority early: the
	// parser then reads the password as a port or a path, which its errors
	// (and ours) would quote.
	if _, rest, _ := strings.Cut(raw, "://"); strings.ContainsAny(rest[:max(strings.LastIndex(rest, "@"), 0)], "/?#") {
		return nil, errors.New("SMTP URL: the user name and password must be percent-encoded (/ as %2F, ? as %3F, # as %23, @ as %40)")
	}
	if err != nil {
		// url.Error repeats the whole URL, password included; keep only the cause.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, fmt.Errorf("SMTP URL is not a URL: %v (want smtp://[user:pass@]host[:port][?tls=none|opportunistic|starttls|tls])", err)
	}
	fail := func(format string, args ...any) (*smtpTarget, error) {
		return nil, fmt.Errorf("SMTP URL %s: %s", u.Redacted(), fmt.Sprintf(format, args...))
	}

	t := &smtpTarget{scheme: strings.ToLower(u.Scheme)}
	switch t.scheme {
	case "smtp":
		t.tls, t.port = tlsOpportunistic, mail.DefaultPort
	case "smtps":
		t.tls, t.port = tlsImplicit, mail.DefaultPortSSL
	case "":
		return fail("missing scheme, want smtp:// or smtps://")
	default:
		return fail("unsupported scheme %q, want smtp or smtps", u.Scheme)
	}
	if u.Opaque != "" {
		return fail("want %s://host[:port]", t.scheme)
	}
	if t.host = u.Hostname(); t.host == "" {
		return fail("missing host")
	}
	if u.Path != "" && u.Path != "/" {
		return fail("unexpected path %q", u.Path)
	}
	if u.Fragment != "" {
		return fail("unexpected fragment %q", u.Fragment)
	}
	if u.User != nil {
		t.user = u.User.Username()
		t.pass, _ = u.User.Password()
		if t.user == "" {
			return fail("empty user name")
		}
	}

	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return fail("bad query: %v", err)
	}
	for key, vals := range q {
		if len(vals) != 1 {
			return fail("option %s given %d times", key, len(vals))
		}
		val := vals[0]
		switch key {
		case "tls":
			mode := tlsMode(strings.ToLower(val))
			if !slices.Contains([]tlsMode{tlsNone, tlsOpportunistic, tlsStartTLS, tlsImplicit}, mode) {
				return fail("tls=%q, want none, opportunistic, starttls or tls", val)
			}
			if t.scheme == "smtps" && mode != tlsImplicit {
				return fail("smtps:// always uses implicit TLS, but tls=%s; use smtp:// for %s", val, val)
			}
			t.tls = mode
		case "skip_verify":
			b, err := strconv.ParseBool(val)
			if err != nil {
				return fail("skip_verify=%q, want true or false", val)
			}
			t.skipVerify = b
		case "timeout":
			d, err := time.ParseDuration(val)
			if err != nil || d <= 0 {
				return fail("timeout=%q, want a positive duration such as 10s", val)
			}
			t.timeout = d
		case "auth":
			a, ok := authTypes[strings.ToLower(val)]
			if !ok {
				return fail("auth=%q, want one of plain, login, cram-md5, scram-sha-1, scram-sha-256, xoauth2", val)
			}
			t.auth = a
		default:
			return fail("unknown option %q (known: tls, skip_verify, timeout, auth)", key)
		}
	}
	if t.auth != "" && t.user == "" {
		return fail("auth=%s needs a user name (smtp://user:pass@host)", q.Get("auth"))
	}

	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return fail("port %q out of range 1-65535", p)
		}
		t.port = n
	} else if t.tls == tlsImplicit {
		t.port = mail.DefaultPortSSL
	}
	return t, nil
}
