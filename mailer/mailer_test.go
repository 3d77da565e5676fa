package mailer_test

import (
	"bufio"
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/internal/testinfra"
	"github.com/heraldhq/herald/mailer"
)

// mailpitAddr is an address in Mailpit's API.
type mailpitAddr struct {
	Name    string `json:"Name"`
	Address string `json:"Address"`
}

// mailpitMessage is a message as Mailpit's API returns it.
type mailpitMessage struct {
	ID        string        `json:"ID"`
	MessageID string        `json:"MessageID"`
	From      mailpitAddr   `json:"From"`
	To        []mailpitAddr `json:"To"`
	Cc        []mailpitAddr `json:"Cc"`
	Bcc       []mailpitAddr `json:"Bcc"`
	Subject   string        `json:"Subject"`
	Text      string        `json:"Text"`
	HTML      string        `json:"HTML"`
}

type testBundle struct {
	mailer *mailer.Mailer
	api    string
	// id is unique to the test; use it in recipients and keys.
	id string
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	smtpURL, api := testinfra.Mailpit(t)
	m, err := mailer.New(mailer.Config{SMTPURL: smtpURL, From: "Herald <herald@herald.test>", Timeout: 5 * time.Second})
	require.NoError(t, err)
	return &testBundle{mailer: m, api: api, id: testinfra.Name(t)}
}

// addr returns an address unique to the test.
func (b *testBundle) addr(local string) string { return local + "." + b.id + "@herald.test" }

func getJSON(t *testing.T, u string, v any) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "GET %s: %s", u, body)
	if s, ok := v.(*string); ok {
		*s = string(body)
		return
	}
	require.NoError(t, json.Unmarshal(body, v), "GET %s", u)
}

// waitMessages polls Mailpit's search until it finds want messages for
// query (and no more), then returns them in full.
func (b *testBundle) waitMessages(t *testing.T, query string, want int) []mailpitMessage {
	t.Helper()
	u := b.api + "/api/v1/search?query=" + url.QueryEscape(query)
	var res struct {
		Messages []struct {
			ID string `json:"ID"`
		} `json:"messages"`
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		getJSON(t, u, &res)
		if len(res.Messages) >= want || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	require.Len(t, res.Messages, want, "messages matching %q", query)
	out := make([]mailpitMessage, len(res.Messages))
	for i, s := range res.Messages {
		getJSON(t, b.api+"/api/v1/message/"+s.ID, &out[i])
	}
	return out
}

// normal turns CRLF into LF and drops the final line break.
func normal(s string) string {
	return strings.TrimRight(strings.ReplaceAll(s, "\r\n", "\n"), "\n")
}

func TestSendPlainText(t *testing.T) {
	t.Parallel()
	b := setup(t)

	to := b.addr("jurgen")
	subject := "Grüße aus Köln — 你好 ✓ " + b.id
	text := "Hällo Jürgen,\n\nyour account was créé — 日本語 テキスト.\nA long line: " + strings.Repeat("ünïcödé ", 20) + "\n-- \nHerald"
	key := "plain/" + b.id
	require.NoError(t, b.mailer.Send(t.Context(), mailer.Message{
		Key:     key,
		To:      []string{"Jürgen Groß <" + to + ">"},
		Subject: subject,
		Text:    text,
	}))

	got := b.waitMessages(t, "to:"+to, 1)[0]
	require.Equal(t, subject, got.Subject)
	require.Equal(t, text, normal(got.Text))
	require.Empty(t, got.HTML)
	require.Equal(t, mailpitAddr{Name: "Herald", Address: "herald@herald.test"}, got.From)
	require.Equal(t, []mailpitAddr{{Name: "Jürgen Groß", Address: to}}, got.To)
	require.Equal(t, "<"+got.MessageID+">", b.mailer.MessageID(key))
}

func TestSendHTMLAndText(t *testing.T) {
	t.Parallel()
	b := setup(t)

	to := b.addr("html")
	html := `<p>Hello <b>wörld</b> — <a href="https://example.test/x?a=1&amp;b=2">link</a></p>`
	require.NoError(t, b.mailer.Send(t.Context(), mailer.Message{
		Key:     "html/" + b.id,
		From:    "Alerts <alerts@herald.test>",
		To:      []string{to},
		Subject: "HTML " + b.id,
		Text:    "Hello wörld",
		HTML:    html,
	}))

	got := b.waitMessages(t, "to:"+to, 1)[0]
	require.Equal(t, "Hello wörld", normal(got.Text))
	require.Equal(t, html, normal(got.HTML))
	require.Equal(t, mailpitAddr{Name: "Alerts", Address: "alerts@herald.test"}, got.From)

	// An HTML-only message is allowed too.
	to2 := b.addr("htmlonly")
	require.NoError(t, b.mailer.Send(t.Context(), mailer.Message{
		Key: "htmlonly/" + b.id, To: []string{to2}, Subject: "HTML only", HTML: "<p>only</p>",
	}))
	got = b.waitMessages(t, "to:"+to2, 1)[0]
	require.Equal(t, "<p>only</p>", normal(got.HTML))
}

func TestSendCcBcc(t *testing.T) {
	t.Parallel()
	b := setup(t)

	to, cc1, cc2, bcc := b.addr("to"), b.addr("cc1"), b.addr("cc2"), b.addr("bcc")
	require.NoError(t, b.mailer.Send(t.Context(), mailer.Message{
		Key:     "ccbcc/" + b.id,
		To:      []string{to},
		Cc:      []string{cc1, "Second Cc <" + cc2 + ">"},
		Bcc:     []string{bcc},
		Subject: "Cc and Bcc " + b.id,
		Text:    "to everyone",
	}))

	got := b.waitMessages(t, "to:"+to, 1)[0]
	require.Equal(t, []mailpitAddr{{Address: to}}, got.To)
	require.Equal(t, []mailpitAddr{{Address: cc1}, {Name: "Second Cc", Address: cc2}}, got.Cc)
	require.Equal(t, []mailpitAddr{{Address: bcc}}, got.Bcc)
	require.Len(t, b.waitMessages(t, "bcc:"+bcc, 1), 1)

	// The Bcc recipient was on the envelope only, never in a header we sent;
	// Mailpit records it in a Bcc header of its own, first in the raw message.
	var raw string
	getJSON(t, b.api+"/api/v1/message/"+got.ID+"/raw", &raw)
	require.True(t, strings.HasPrefix(raw, "Bcc: "+bcc+"\r\n"), raw)
	require.Equal(t, 1, strings.Count(raw, bcc), raw)
	require.Contains(t, raw, "Auto-Submitted: auto-generated")
}

func TestSendMessageIDFromKey(t *testing.T) {
	t.Parallel()
	b := setup(t)

	to := b.addr("again")
	msg := mailer.Message{Key: "resend/" + b.id, To: []string{to}, Subject: "Resend " + b.id, Text: "once"}
	require.NoError(t, b.mailer.Send(t.Context(), msg))
	require.NoError(t, b.mailer.Send(t.Context(), msg)) // a redelivery
	msg.Key += "/other"
	require.NoError(t, b.mailer.Send(t.Context(), msg))

	got := b.waitMessages(t, "to:"+to, 3)
	ids := map[string]int{}
	for _, m := range got {
		ids[m.MessageID]++
	}
	first := strings.Trim(b.mailer.MessageID("resend/"+b.id), "<>")
	other := strings.Trim(b.mailer.MessageID("resend/"+b.id+"/other"), "<>")
	require.Equal(t, map[string]int{first: 2, other: 1}, ids)
	require.True(t, strings.HasSuffix(first, "@herald.local"), first)

	// Another domain, same key: same left-hand side.
	m2, err := mailer.New(mailer.Config{MessageIDDomain: "mail.example.test"})
	require.NoError(t, err)
	require.Equal(t, strings.Split(first, "@")[0]+"@mail.example.test", strings.Trim(m2.MessageID("resend/"+b.id), "<>"))
}

func emlFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestFileBackend(t *testing.T) {
	t.Parallel()

	dir := filepath.Join(t.TempDir(), "mail", "out") // created on first Send
	m, err := mailer.New(mailer.Config{Dir: dir})
	require.NoError(t, err)
	require.Equal(t, "file:"+dir, m.Backend())

	msg := mailer.Message{
		Key:     "file/1",
		To:      []string{"Zoë <zoe@example.test>"},
		Cc:      []string{"cc@example.test"},
		Bcc:     []string{"audit@example.test"},
		Subject: "Fichier — ✓",
		Text:    "first version, ünïcode",
		HTML:    "<p>first version</p>",
	}
	require.NoError(t, m.Send(t.Context(), msg))
	names := emlFiles(t, dir)
	require.Len(t, names, 1)
	require.True(t, strings.HasSuffix(names[0], ".eml"), names[0])
	require.NotContains(t, names[0], "/")

	raw, err := os.ReadFile(filepath.Join(dir, names[0]))
	require.NoError(t, err)
	eml := string(raw)
	for _, want := range []string{
		"Message-ID: " + m.MessageID("file/1"),
		"From: <herald@localhost>",
		"To: =?utf-8?q?Zo=C3=AB?= <zoe@example.test>",
		"Cc: <cc@example.test>",
		"Bcc: <audit@example.test>",
		"Subject: =?UTF-8?q?",
		"Date: ",
		"Content-Type: multipart/alternative",
		"Content-Type: text/plain; charset=UTF-8",
		"Content-Type: text/html; charset=UTF-8",
		"first version, =C3=BCn=C3=AFcode",
		"<p>first version</p>",
	} {
		require.Contains(t, eml, want)
	}

	// A resend with the same key replaces the file.
	msg.Text = "second version"
	require.NoError(t, m.Send(t.Context(), msg))
	require.Equal(t, names, emlFiles(t, dir))
	raw, err = os.ReadFile(filepath.Join(dir, names[0]))
	require.NoError(t, err)
	require.Contains(t, string(raw), "second version")
	require.NotContains(t, string(raw), "first version, ")

	// Another key is another file; no temporary files are left behind.
	msg.Key = "file/2"
	require.NoError(t, m.Send(t.Context(), msg))
	names = emlFiles(t, dir)
	require.Len(t, names, 2)
	for _, n := range names {
		require.False(t, strings.HasPrefix(n, "."), n)
	}
}

func TestSendInvalidMessage(t *testing.T) {
	t.Parallel()

	dir := t.TempDir()
	m, err := mailer.New(mailer.Config{Dir: dir})
	require.NoError(t, err)
	ok := mailer.Message{Key: "k", To: []string{"a@example.test"}, Subject: "s", Text: "t"}

	tests := []struct {
		name    string
		edit    func(*mailer.Message)
		wantErr string
	}{
		{"NoKey", func(m *mailer.Message) { m.Key = "" }, "empty Key"},
		{"NoBody", func(m *mailer.Message) { m.Text = "" }, "no body"},
		{"NoRecipients", func(m *mailer.Message) { m.To = nil }, "no recipients"},
		{"BadTo", func(m *mailer.Message) { m.To = []string{"not an address"} }, `invalid To address "not an address"`},
		{"BadCc", func(m *mailer.Message) { m.Cc = []string{"a@b@c"} }, `invalid Cc address "a@b@c"`},
		{"BadBcc", func(m *mailer.Message) { m.Bcc = []string{""} }, `invalid Bcc address ""`},
		{"BadFrom", func(m *mailer.Message) { m.From = "<broken" }, `invalid From address "<broken"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			msg := ok
			tt.edit(&msg)
			err := m.Send(t.Context(), msg)
			require.ErrorContains(t, err, tt.wantErr)
			require.True(t, mailer.Permanent(err), "Permanent(%v)", err)
		})
	}
	t.Cleanup(func() { require.Empty(t, emlFiles(t, dir)) })
}

func TestSendUnreachable(t *testing.T) {
	t.Parallel()

	m, err := mailer.New(mailer.Config{SMTPURL: "smtp://127.0.0.1:1?timeout=2s"})
	require.NoError(t, err)
	require.Equal(t, "smtp://127.0.0.1:1", m.Backend())
	msg := mailer.Message{Key: "unreachable", To: []string{"a@example.test"}, Subject: "s", Text: "t"}

	err = m.Send(t.Context(), msg)
	require.Error(t, err)
	require.ErrorContains(t, err, "smtp://127.0.0.1:1")
	require.False(t, mailer.Permanent(err), "Permanent(%v)", err)

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err = m.Send(ctx, msg)
	require.ErrorIs(t, err, context.Canceled)
	require.False(t, mailer.Permanent(err))
}

// fakeServer configures fakeSMTP.
type fakeServer struct {
	rcptReply string      // reply to RCPT TO; default "250 OK"
	stall     bool        // never answer DATA
	implicit  *tls.Config // speak TLS from the first byte (smtps)
	startTLS  *tls.Config // offer STARTTLS
	auth      bool        // offer AUTH PLAIN and record the credentials
	hangUp    bool        // close the connection after accepting a message
}

// fakeSession records what one fakeSMTP server saw.
type fakeSession struct {
	mu        sync.Mutex
	tls       bool   // the message was sent over TLS
	plainAuth string // the decoded AUTH PLAIN response
	delivered int    // messages accepted
}

func (s *fakeSession) usedTLS() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tls
}

func (s *fakeSession) auth() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.plainAuth
}

func (s *fakeSession) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.delivered
}

// fakeSMTP starts a minimal SMTP server and returns its URL (tls=none,
// unless TLS is configured) and what it saw.
func fakeSMTP(t *testing.T, cfg fakeServer) (string, *fakeSession) {
	t.Helper()
	cfg.rcptReply = cmp.Or(cfg.rcptReply, "250 OK")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	sess := &fakeSession{}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { serveFakeSMTP(conn, cfg, sess) })
		}
	})
	switch {
	case cfg.implicit != nil:
		return "smtps://" + ln.Addr().String() + "?timeout=5s", sess
	case cfg.startTLS != nil:
		return "smtp://" + ln.Addr().String() + "?timeout=5s", sess
	default:
		return "smtp://" + ln.Addr().String() + "?tls=none&timeout=5s", sess
	}
}

func serveFakeSMTP(conn net.Conn, cfg fakeServer, sess *fakeSession) {
	defer func() { _ = conn.Close() }()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	isTLS := false
	if cfg.implicit != nil {
		conn, isTLS = tls.Server(conn, cfg.implicit), true
	}
	r := bufio.NewReader(conn)
	reply := func(s string) { _, _ = io.WriteString(conn, s+"\r\n") }
	reply("220 fake ESMTP")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		fields := strings.Fields(line)
		if len(fields) == 0 {
			reply("500 empty command")
			continue
		}
		switch strings.ToUpper(fields[0]) {
		case "EHLO", "HELO":
			reply("250-fake")
			if cfg.startTLS != nil && !isTLS {
				reply("250-STARTTLS")
			}
			if cfg.auth {
				reply("250-AUTH PLAIN")
			}
			reply("250 8BITMIME")
		case "STARTTLS":
			reply("220 ready to start TLS")
			conn, isTLS = tls.Server(conn, cfg.startTLS), true
			r = bufio.NewReader(conn)
		case "AUTH":
			if len(fields) == 3 && strings.EqualFold(fields[1], "PLAIN") {
				dec, _ := base64.StdEncoding.DecodeString(fields[2])
				sess.mu.Lock()
				sess.plainAuth = string(dec)
				sess.mu.Unlock()
				reply("235 2.7.0 authenticated")
			} else {
				reply("504 unsupported")
			}
		case "MAIL", "RSET", "NOOP":
			reply("250 OK")
		case "RCPT":
			reply(cfg.rcptReply)
		case "DATA":
			if cfg.stall {
				_, _ = io.Copy(io.Discard, r) // until the client hangs up
				return
			}
			reply("354 go ahead")
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
			}
			sess.mu.Lock()
			sess.tls = isTLS
			sess.delivered++
			sess.mu.Unlock()
			reply("250 queued")
			if cfg.hangUp {
				return
			}
		case "QUIT":
			reply("221 bye")
			return
		default:
			reply("502 not implemented")
		}
	}
}

// A message the server accepted counts as sent even when the connection
// fails after it (here before RSET and QUIT): an error would make the
// caller send it again.
func TestSendAcceptedBeforeTheConnectionFails(t *testing.T) {
	t.Parallel()
	u, sess := fakeSMTP(t, fakeServer{hangUp: true})
	m, err := mailer.New(mailer.Config{SMTPURL: u})
	require.NoError(t, err)
	err = m.Send(t.Context(), mailer.Message{Key: "k", To: []string{"a@example.test"}, Subject: "s", Text: "t"})
	require.NoError(t, err)
	require.Equal(t, 1, sess.count())
}

// selfSigned returns a server TLS config with a fresh certificate for 127.0.0.1.
func selfSigned(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "fake smtp"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12}
}

func TestSendTLS(t *testing.T) {
	t.Parallel()

	msg := mailer.Message{Key: "tls", To: []string{"a@example.test"}, Subject: "s", Text: "t"}
	send := func(t *testing.T, u string) error {
		t.Helper()
		m, err := mailer.New(mailer.Config{SMTPURL: u})
		require.NoError(t, err)
		return m.Send(t.Context(), msg)
	}

	t.Run("Implicit", func(t *testing.T) {
		t.Parallel()
		u, sess := fakeSMTP(t, fakeServer{implicit: selfSigned(t), auth: true})
		require.NoError(t, send(t, strings.Replace(u, "smtps://", "smtps://herald:p%40ss@", 1)+"&skip_verify=true"))
		require.True(t, sess.usedTLS())
		require.Equal(t, "\x00herald\x00p@ss", sess.auth())
	})
	t.Run("ImplicitUntrusted", func(t *testing.T) {
		t.Parallel()
		u, sess := fakeSMTP(t, fakeServer{implicit: selfSigned(t)})
		err := send(t, u)
		require.ErrorContains(t, err, "certificate")
		require.False(t, mailer.Permanent(err))
		require.Zero(t, sess.count())
	})
	t.Run("StartTLS", func(t *testing.T) {
		t.Parallel()
		u, sess := fakeSMTP(t, fakeServer{startTLS: selfSigned(t), auth: true})
		require.NoError(t, send(t, strings.Replace(u, "smtp://", "smtp://herald:secret@", 1)+"&tls=starttls&skip_verify=true"))
		require.True(t, sess.usedTLS())
		require.Equal(t, "\x00herald\x00secret", sess.auth())
	})
	t.Run("OpportunisticUpgrades", func(t *testing.T) {
		t.Parallel()
		u, sess := fakeSMTP(t, fakeServer{startTLS: selfSigned(t)})
		require.NoError(t, send(t, u+"&skip_verify=true"))
		require.True(t, sess.usedTLS())
	})
	t.Run("StartTLSRequiredButMissing", func(t *testing.T) {
		t.Parallel()
		u, sess := fakeSMTP(t, fakeServer{})
		err := send(t, strings.Replace(u, "tls=none", "tls=starttls", 1))
		require.ErrorContains(t, err, "STARTTLS")
		require.False(t, mailer.Permanent(err))
		require.Zero(t, sess.count())
	})
	t.Run("NoTLS", func(t *testing.T) {
		t.Parallel()
		u, sess := fakeSMTP(t, fakeServer{startTLS: selfSigned(t)})
		require.NoError(t, send(t, u+"&tls=none"))
		require.False(t, sess.usedTLS())
		require.Equal(t, 1, sess.count())
	})
}

func TestPermanent(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name      string
		rcptReply string
		permanent bool
	}{
		{"Rejected550", "550 5.1.1 no such user", true},
		{"Rejected553", "553 mailbox name not allowed", true},
		{"Busy450", "450 4.2.1 mailbox busy, try later", false},
		{"Greylisted451", "451 4.7.1 greylisted", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			u, sess := fakeSMTP(t, fakeServer{rcptReply: tt.rcptReply})
			m, err := mailer.New(mailer.Config{SMTPURL: u})
			require.NoError(t, err)
			err = m.Send(t.Context(), mailer.Message{Key: tt.name, To: []string{"a@example.test"}, Subject: "s", Text: "t"})
			require.ErrorContains(t, err, strings.Fields(tt.rcptReply)[0])
			require.Zero(t, sess.count())
			require.Equal(t, tt.permanent, mailer.Permanent(err), "Permanent(%v)", err)
		})
	}

	t.Run("Accepted", func(t *testing.T) {
		t.Parallel()
		u, sess := fakeSMTP(t, fakeServer{})
		m, err := mailer.New(mailer.Config{SMTPURL: u})
		require.NoError(t, err)
		require.NoError(t, m.Send(t.Context(), mailer.Message{Key: "ok", To: []string{"a@example.test"}, Text: "t"}))
		require.Equal(t, 1, sess.count())
	})

	t.Run("Others", func(t *testing.T) {
		t.Parallel()
		require.False(t, mailer.Permanent(nil))
		require.False(t, mailer.Permanent(errors.New("something")))
		require.False(t, mailer.Permanent(context.DeadlineExceeded))
	})
}

func TestSendCancelMidConversation(t *testing.T) {
	t.Parallel()

	u, _ := fakeSMTP(t, fakeServer{stall: true})
	m, err := mailer.New(mailer.Config{SMTPURL: u})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = m.Send(ctx, mailer.Message{Key: "stall", To: []string{"a@example.test"}, Text: "t"})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.False(t, mailer.Permanent(err))
	require.Less(t, time.Since(start), 3*time.Second, "Send should return soon after ctx ends")
}

func TestNewSMTPURL(t *testing.T) {
	t.Parallel()

	good := []struct{ url, backend string }{
		{"smtp://mail.example.test", "smtp://mail.example.test:25"},
		{"smtp://user:p%40ss@mail.example.test:2525?tls=none", "smtp://mail.example.test:2525"},
		{"smtp://mail.example.test?tls=starttls&skip_verify=true&timeout=3s", "smtp://mail.example.test:25"},
		{"smtp://mail.example.test?tls=opportunistic", "smtp://mail.example.test:25"},
		{"smtp://mail.example.test?tls=tls", "smtp://mail.example.test:465"},
		{"smtps://mail.example.test", "smtps://mail.example.test:465"},
		{"SMTPS://u:p@mail.example.test:2465/?auth=login", "smtps://mail.example.test:2465"},
		{"smtp://[::1]:1025", "smtp://[::1]:1025"},
	}
	for _, tt := range good {
		m, err := mailer.New(mailer.Config{SMTPURL: tt.url})
		require.NoError(t, err, tt.url)
		require.Equal(t, tt.backend, m.Backend(), tt.url)
	}

	bad := []struct{ url, wantErr string }{
		{"http://mail.example.test", `unsupported scheme "http"`},
		{"mail.example.test:25", `unsupported scheme "mail.example.test"`},
		{"mail.example.test", "missing scheme"},
		{"smtp://", "missing host"},
		{"smtp://:25", "missing host"},
		{"smtp://mail.example.test:99999", `port "99999" out of range`},
		{"smtp://mail.example.test:abc", "not a URL"},
		{"smtp://mail.example.test/path", `unexpected path "/path"`},
		{"smtp://mail.example.test?tls=maybe", `tls="maybe", want none, opportunistic, starttls or tls`},
		{"smtps://mail.example.test?tls=starttls", "smtps:// always uses implicit TLS"},
		{"smtp://mail.example.test?skip_verify=perhaps", `skip_verify="perhaps"`},
		{"smtp://mail.example.test?timeout=soon", `timeout="soon"`},
		{"smtp://mail.example.test?timeout=-1s", `timeout="-1s"`},
		{"smtp://mail.example.test?auth=plain", "auth=plain needs a user name"},
		{"smtp://u:p@mail.example.test?auth=magic", `auth="magic"`},
		{"smtp://mail.example.test?tls=none&tls=tls", "option tls given 2 times"},
		{"smtp://mail.example.test?port=25", `unknown option "port"`},
		{"smtp:mail.example.test", "want smtp://host[:port]"},
		{"smtp://user:s3cret-pw@mail.example.test?tls=bogus", "xxxxx"},
		{"smtp://user:s3cret-pw@mail.example.test:bad", "not a URL"},
		{"smtp://user:s3cret-pw@exa mple.test", "not a URL"},
		// An unescaped /, ? or # in the password ends the authority early.
		{"smtp://user:s3cret-pw/x@mail.example.test", "must be percent-encoded"},
		{"smtp://user:1234/s3cret-pw@mail.example.test", "must be percent-encoded"},
		{"smtp://user:s3cret-pw?x=1@mail.example.test", "must be percent-encoded"},
		{"smtp://user:s3cret-pw#2@mail.example.test", "must be percent-encoded"},
	}
	for _, tt := range bad {
		_, err := mailer.New(mailer.Config{SMTPURL: tt.url})
		require.ErrorContains(t, err, tt.wantErr, tt.url)
		require.ErrorContains(t, err, "mailer: SMTP URL", tt.url)
		require.NotContains(t, err.Error(), "s3cret-pw", "the password must not leak")
	}
}

func TestNewConfig(t *testing.T) {
	t.Parallel()

	m, err := mailer.New(mailer.Config{})
	require.NoError(t, err)
	require.Equal(t, "file:data/mail", m.Backend())
	require.Regexp(t, `^<[0-9a-f]{32}@herald\.local>$`, m.MessageID("k"))

	_, err = mailer.New(mailer.Config{From: "not an address"})
	require.ErrorContains(t, err, `From "not an address"`)
	_, err = mailer.New(mailer.Config{MessageIDDomain: "bad domain>"})
	require.ErrorContains(t, err, "MessageIDDomain")
	_, err = mailer.New(mailer.Config{Timeout: -time.Second})
	require.ErrorContains(t, err, "Timeout")
}

func TestRenderEventNotification(t *testing.T) {
	t.Parallel()

	data := map[string]any{
		"title": "model_created",
		"body":  "A user was created: <script>alert(1)</script>\nsecond line",
		"key_value": map[string]any{
			"user_email":    "jürgen@example.test",
			"user_username": "jurgen",
			"message":       "5 < 6 & 7",
		},
		"link":   map[string]any{"target": "https://auth.example.test/if/admin/#/events?a=1&b=2", "label": "Open event"},
		"source": map[string]any{"from": "email-admins"},
	}
	subject, html, text, err := mailer.Render(mailer.EventNotification, data)
	require.NoError(t, err)
	require.Equal(t, "model_created", subject)

	for _, want := range []string{
		"<h1>model_created</h1>",
		"A user was created: &lt;script&gt;alert(1)&lt;/script&gt;\nsecond line",
		`<td class="td-right">user_email</td>`,
		`<td class="td-left">jürgen@example.test</td>`,
		`<td class="td-left">5 &lt; 6 &amp; 7</td>`,
		`href="https://auth.example.test/if/admin/#/events?a=1&amp;b=2"`,
		">Open event</a>",
		"<code>email-admins</code>",
	} {
		require.Contains(t, html, want)
	}
	require.NotContains(t, html, "<script>")

	require.Equal(t, `model_created

A user was created: <script>alert(1)</script>
second line

message: 5 < 6 & 7
user_email: jürgen@example.test
user_username: jurgen

Open event: https://auth.example.test/if/admin/#/events?a=1&b=2

This email was sent from the notification transport "email-admins".
`, text)

	// Optional parts left out leave no trace.
	subject, html, text, err = mailer.Render(mailer.EventNotification, map[string]any{"title": "login", "body": "hi"})
	require.NoError(t, err)
	require.Equal(t, "login", subject)
	require.Equal(t, "login\n\nhi\n", text)
	require.NotContains(t, html, "properties-table\"")
	require.NotContains(t, html, "<a ")
	require.NotContains(t, html, "no value")

	// A javascript: link is neutralised by html/template.
	_, html, _, err = mailer.Render(mailer.EventNotification, map[string]any{"title": "x", "link": map[string]any{"target": "javascript:alert(1)"}})
	require.NoError(t, err)
	require.NotContains(t, html, `href="javascript:`)
}

func TestRenderErrors(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name    string
		tpl     mailer.Template
		part    string
		wantErr string
	}{
		{"HTMLParse", mailer.Template{Name: "welcome", Subject: "s", HTML: "<p>{{.name</p>", Text: "ok"}, "html", `template "welcome", html part`},
		{"TextParse", mailer.Template{Name: "digest", Subject: "s", Text: "{{if .x}}unclosed"}, "text", `template "digest", text part`},
		{"SubjectParse", mailer.Template{Name: "subj", Subject: "{{.a", Text: "ok"}, "subject", `template "subj", subject part`},
		{"TextExec", mailer.Template{Name: "execfail", Subject: "s", Text: "{{index .list 5}}"}, "text", `template "execfail", text part`},
		{"HTMLExec", mailer.Template{Name: "htmlexec", Subject: "s", HTML: "{{template \"missing\"}}"}, "html", `template "htmlexec", html part`},
		{"NoBody", mailer.Template{Name: "empty", Subject: "s"}, "", `template "empty": has neither an html nor a text part`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, _, _, err := mailer.Render(tt.tpl, map[string]any{"list": []any{1}})
			require.ErrorContains(t, err, tt.wantErr)
			var terr *mailer.TemplateError
			require.ErrorAs(t, err, &terr)
			require.Equal(t, tt.tpl.Name, terr.Template)
			require.Equal(t, tt.part, terr.Part)
		})
	}
}

func TestRenderSubjectOneLine(t *testing.T) {
	t.Parallel()

	subject, _, text, err := mailer.Render(mailer.Template{Name: "s", Subject: "  Hello\r\n{{.name}}\n", Text: "Hi {{.name}}"}, map[string]any{"name": "Zoë"})
	require.NoError(t, err)
	require.Equal(t, "Hello Zoë", subject)
	require.Equal(t, "Hi Zoë", text)
}

func TestSendRendered(t *testing.T) {
	t.Parallel()
	b := setup(t)

	to := b.addr("rendered")
	subject, html, text, err := mailer.Render(mailer.EventNotification, map[string]any{
		"title": "login " + b.id, "body": "Unknown device — ✓", "key_value": map[string]any{"user_username": "zoë"},
	})
	require.NoError(t, err)
	require.NoError(t, b.mailer.Send(t.Context(), mailer.Message{
		Key: "rendered/" + b.id, To: []string{to}, Subject: "Herald Notification: " + subject, Text: text, HTML: html,
	}))
	got := b.waitMessages(t, "to:"+to, 1)[0]
	require.Equal(t, "Herald Notification: login "+b.id, got.Subject)
	require.Equal(t, normal(text), normal(got.Text))
	require.Contains(t, got.HTML, `<td class="td-left">zoë</td>`)
}
