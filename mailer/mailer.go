package mailer

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	netmail "net/mail"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/wneessen/go-mail"
)

// Defaults of [Config].
const (
	DefaultFrom            = "herald@localhost"
	DefaultDir             = "data/mail"
	DefaultMessageIDDomain = "herald.local"
	DefaultTimeout         = 10 * time.Second
)

// Message is one email. Key is an idempotency key: the Message-ID is
// derived from it, so a resend of the same Key has the same Message-ID (and,
// with the file backend, replaces the same file).
type Message struct {
	// Key is the idempotency key; required.
	Key string
	// From is the sender, "addr" or "Name <addr>"; empty means [Config.From].
	From string
	// To, Cc and Bcc are the recipients, each "addr" or "Name <addr>". At
	// least one recipient is required.
	To []string
	// Cc recipients are visible to everyone; see To for the format.
	Cc []string
	// Bcc recipients receive the message but appear in no header sent over
	// SMTP. The file backend records them in a Bcc header, so the .eml file
	// names everyone the message was meant for.
	Bcc []string
	// Subject is the subject line; line breaks are replaced by spaces.
	Subject string
	// Text is the plain-text part (required if HTML is empty).
	Text string
	// HTML is an optional HTML alternative to Text (or the only part when
	// Text is empty).
	HTML string
}

// Config configures a [Mailer]. The zero value writes .eml files under
// data/mail.
type Config struct {
	// SMTPURL is
	// smtp://[user:pass@]host[:port][?tls=none|opportunistic|starttls|tls&skip_verify=true&timeout=10s&auth=plain].
	// smtps:// means implicit TLS (port 465 by default); smtp:// defaults to
	// port 25 and tls=opportunistic (STARTTLS when the server offers it).
	// The user name and password are percent-decoded. auth picks one SMTP
	// AUTH mechanism (plain, login, cram-md5, scram-sha-1, scram-sha-256,
	// xoauth2) instead of the strongest one offered. timeout overrides
	// Timeout. Empty: the file backend.
	SMTPURL string
	// From is the default sender, "addr" or "Name <addr>". Defaults to
	// herald@localhost.
	From string
	// Dir is the file backend's directory, created when needed. Defaults to
	// data/mail.
	Dir string
	// MessageIDDomain is the right-hand side of every Message-ID. Defaults
	// to herald.local.
	MessageIDDomain string
	// Timeout bounds connecting to the SMTP server and each SMTP command.
	// Defaults to 10s.
	Timeout time.Duration
}

func (c Config) withDefaults() Config {
	c.From = cmp.Or(strings.TrimSpace(c.From), DefaultFrom)
	c.Dir = cmp.Or(c.Dir, DefaultDir)
	c.MessageIDDomain = cmp.Or(c.MessageIDDomain, DefaultMessageIDDomain)
	c.Timeout = cmp.Or(c.Timeout, DefaultTimeout)
	return c
}

// Mailer sends [Message]s through SMTP or writes them as .eml files. It is
// safe for concurrent use; every Send opens its own SMTP connection.
type Mailer struct {
	cfg  Config
	from *netmail.Address
	smtp *smtpTarget // nil: the file backend
}

// New validates cfg and returns a Mailer. A malformed SMTPURL, From or
// MessageIDDomain is reported here, not on the first Send. New does not
// connect to the server or touch the file system.
func New(cfg Config) (*Mailer, error) {
	cfg = cfg.withDefaults()
	if cfg.Timeout < 0 {
		return nil, errors.New("mailer: Timeout cannot be negative")
	}
	from, err := netmail.ParseAddress(cfg.From)
	if err != nil {
		return nil, fmt.Errorf("mailer: From %q is not an email address: %w", cfg.From, err)
	}
	if !validDomain(cfg.MessageIDDomain) {
		return nil, fmt.Errorf("mailer: MessageIDDomain %q is not a domain name", cfg.MessageIDDomain)
	}
	m := &Mailer{cfg: cfg, from: from}
	if strings.TrimSpace(cfg.SMTPURL) != "" {
		if m.smtp, err = parseSMTPURL(strings.TrimSpace(cfg.SMTPURL)); err != nil {
			return nil, fmt.Errorf("mailer: %w", err)
		}
		m.smtp.timeout = cmp.Or(m.smtp.timeout, cfg.Timeout)
	}
	return m, nil
}

// validDomain accepts a dot-atom made of letters, digits, hyphens and dots.
func validDomain(s string) bool {
	if s == "" || strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") || strings.Contains(s, "..") {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}

// Backend describes where messages go: "smtp://host:port" (or smtps://),
// without credentials, or "file:<dir>". It is meant for logs and status
// output.
func (m *Mailer) Backend() string {
	if m.smtp == nil {
		return "file:" + m.cfg.Dir
	}
	return m.smtp.scheme + "://" + m.smtp.addr()
}

// MessageID returns the Message-ID header value, angle brackets included,
// that a [Message] with this key is sent with: the first 128 bits of the
// key's SHA-256 in hex, at [Config.MessageIDDomain]
// ("<3f1c…9a@herald.local>"). The key itself never appears in the message.
func (m *Mailer) MessageID(key string) string {
	return "<" + messageIDLocal(key) + "@" + m.cfg.MessageIDDomain + ">"
}

// messageIDLocal is the left-hand side of key's Message-ID; 32 hex digits
// keep the header on one line.
func messageIDLocal(key string) string { return keyHash(key)[:32] }

// keyHash is the hex SHA-256 of key; the file backend names files with it.
func keyHash(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// Send delivers msg through the configured backend. A message that is
// invalid (no key, no recipient, a malformed address, no body) fails before
// anything is sent, with an error for which [Permanent] is true.
//
// Delivery is at least once: a message the server accepted counts as sent,
// even when the connection breaks afterwards (RSET, QUIT); if ctx ends or
// the connection breaks before the server answered the message's final
// ".", Send reports an error and a retry sends it again, with the same
// Message-ID. ctx ending aborts the SMTP conversation; the returned error
// then wraps ctx's cause.
func (m *Mailer) Send(ctx context.Context, msg Message) error {
	gm, bcc, err := m.build(msg)
	if err != nil {
		return fmt.Errorf("mailer: message %q: %w", msg.Key, err)
	}
	if m.smtp == nil {
		if err := m.writeFile(gm, msg.Key, bcc); err != nil {
			return fmt.Errorf("mailer: write message %q to %s: %w", msg.Key, m.cfg.Dir, err)
		}
		return nil
	}
	if err := m.sendSMTP(ctx, gm); err != nil {
		return fmt.Errorf("mailer: send message %q via %s: %w", msg.Key, m.Backend(), err)
	}
	return nil
}

// build validates msg and turns it into a go-mail message. It returns the
// parsed Bcc recipients too, which the file backend records.
func (m *Mailer) build(msg Message) (*mail.Msg, []*netmail.Address, error) {
	if msg.Key == "" {
		return nil, nil, invalid(errors.New("empty Key; every message needs an idempotency key"))
	}
	if msg.Text == "" && msg.HTML == "" {
		return nil, nil, invalid(errors.New("no body: Text and HTML are both empty"))
	}
	from := m.from
	if strings.TrimSpace(msg.From) != "" {
		a, err := netmail.ParseAddress(msg.From)
		if err != nil {
			return nil, nil, invalid(fmt.Errorf("invalid From address %q: %w", msg.From, err))
		}
		from = a
	}
	to, err := parseAddrs("To", msg.To)
	if err != nil {
		return nil, nil, err
	}
	cc, err := parseAddrs("Cc", msg.Cc)
	if err != nil {
		return nil, nil, err
	}
	bcc, err := parseAddrs("Bcc", msg.Bcc)
	if err != nil {
		return nil, nil, err
	}
	if len(to)+len(cc)+len(bcc) == 0 {
		return nil, nil, invalid(errors.New("no recipients: To, Cc and Bcc are all empty"))
	}

	gm := mail.NewMsg(mail.WithNoDefaultUserAgent())
	gm.SetMessageIDWithValue(messageIDLocal(msg.Key) + "@" + m.cfg.MessageIDDomain)
	gm.SetDate()
	gm.SetUserAgent("Herald")
	// RFC 3834: an automatic notification; auto-responders should not reply.
	gm.SetGenHeader(mail.Header("Auto-Submitted"), "auto-generated")
	gm.FromMailAddress(from)
	if len(to) > 0 {
		gm.SetAddrHeaderFromMailAddress(mail.HeaderTo, to...)
	}
	if len(cc) > 0 {
		gm.SetAddrHeaderFromMailAddress(mail.HeaderCc, cc...)
	}
	if len(bcc) > 0 {
		gm.SetAddrHeaderFromMailAddress(mail.HeaderBcc, bcc...)
	}
	gm.Subject(oneLine(msg.Subject))
	switch {
	case msg.Text != "" && msg.HTML != "":
		gm.SetBodyString(mail.TypeTextPlain, msg.Text)
		gm.AddAlternativeString(mail.TypeTextHTML, msg.HTML)
	case msg.Text != "":
		gm.SetBodyString(mail.TypeTextPlain, msg.Text)
	default:
		gm.SetBodyString(mail.TypeTextHTML, msg.HTML)
	}
	return gm, bcc, nil
}

// parseAddrs parses each of list as "addr" or "Name <addr>".
func parseAddrs(field string, list []string) ([]*netmail.Address, error) {
	out := make([]*netmail.Address, 0, len(list))
	for _, s := range list {
		a, err := netmail.ParseAddress(s)
		if err != nil {
			return nil, invalid(fmt.Errorf("invalid %s address %q: %w", field, s, err))
		}
		out = append(out, a)
	}
	return out, nil
}

// oneLine replaces line breaks, so a subject cannot inject headers.
func oneLine(s string) string {
	return strings.Join(strings.FieldsFunc(s, func(r rune) bool { return r == '\r' || r == '\n' }), " ")
}

// sendSMTP sends gm over a new SMTP connection. The connection is closed when
// ctx ends, so a cancelled Send returns promptly.
func (m *Mailer) sendSMTP(ctx context.Context, gm *mail.Msg) error {
	if err := context.Cause(ctx); err != nil {
		return err
	}
	s := m.smtp
	tlsCfg := &tls.Config{ServerName: s.host, MinVersion: tls.VersionTLS12, InsecureSkipVerify: s.skipVerify} //nolint:gosec // skip_verify is the operator's explicit choice

	// go-mail leaves the connection open when the session set-up (greeting,
	// STARTTLS, AUTH) fails, so every connection is closed here once the
	// send is over, and at once when ctx ends.
	var (
		mu    sync.Mutex
		conns []net.Conn
		stops []func() bool
	)
	dial := func(dctx context.Context, network, addr string) (net.Conn, error) {
		d := &net.Dialer{}
		var conn net.Conn
		var err error
		if s.tls == tlsImplicit {
			conn, err = (&tls.Dialer{NetDialer: d, Config: tlsCfg}).DialContext(dctx, network, addr)
		} else {
			conn, err = d.DialContext(dctx, network, addr)
		}
		if err != nil {
			return nil, err
		}
		stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
		mu.Lock()
		conns, stops = append(conns, conn), append(stops, stop)
		mu.Unlock()
		return conn, nil
	}
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for i, conn := range conns {
			stops[i]()
			_ = conn.Close() // already closed after a QUIT; that error is expected
		}
	}()

	opts := []mail.Option{
		mail.WithPort(s.port),
		mail.WithTimeout(s.timeout),
		mail.WithTLSConfig(tlsCfg),
		mail.WithDialContextFunc(dial),
	}
	switch s.tls {
	case tlsNone:
		opts = append(opts, mail.WithTLSPolicy(mail.NoTLS))
	case tlsOpportunistic:
		opts = append(opts, mail.WithTLSPolicy(mail.TLSOpportunistic))
	case tlsStartTLS:
		opts = append(opts, mail.WithTLSPolicy(mail.TLSMandatory))
	case tlsImplicit:
		// The dialer above speaks TLS; WithSSL stops go-mail from trying STARTTLS.
		opts = append(opts, mail.WithSSL())
	}
	if s.user != "" {
		opts = append(opts, mail.WithUsername(s.user), mail.WithPassword(s.pass))
		if s.auth != "" {
			opts = append(opts, mail.WithSMTPAuth(s.auth))
		} else {
			opts = append(opts, mail.WithOpportunisticSMTPAuth(
				mail.SMTPAuthSCRAMSHA256, mail.SMTPAuthSCRAMSHA1, mail.SMTPAuthCramMD5,
				mail.SMTPAuthPlain, mail.SMTPAuthLogin))
		}
	}
	client, err := mail.NewClient(s.host, opts...)
	if err != nil {
		return fmt.Errorf("configure SMTP client: %w", err)
	}
	err = client.DialAndSendWithContext(ctx, gm)
	if err != nil && gm.IsDelivered() {
		// The server accepted the message; only what follows it (RSET,
		// QUIT, closing) failed. Sending it again would deliver it twice.
		return nil
	}
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("%w (%w)", context.Cause(ctx), err)
	}
	return err
}

// fileName is the file a message with key is written to.
func (m *Mailer) fileName(key string) string {
	return filepath.Join(m.cfg.Dir, keyHash(key)+".eml")
}
