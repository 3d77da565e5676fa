package testinfra

import (
	"errors"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/testcontainers/testcontainers-go/wait"
)

var mailpit struct {
	once            sync.Once
	smtpURL, apiURL string
	err             error
}

// Mailpit returns the SMTP URL and the HTTP API base URL (no trailing
// slash) of the shared Mailpit server. It is found from SMTP_URL together
// with MAILPIT_API_URL, else at Mailpit's default local ports
// (127.0.0.1:1025 and http://127.0.0.1:8025) when both answer, else in an
// axllent/mailpit container. Mailpit's store is shared by every test, so a
// test must find its own messages, by a unique recipient or subject, and
// must not delete all messages.
func Mailpit(t testing.TB) (smtpURL, apiURL string) {
	t.Helper()
	mailpit.once.Do(func() {
		mailpit.smtpURL, mailpit.apiURL, mailpit.err = findMailpit()
	})
	if mailpit.err != nil {
		Unavailable(t, "Mailpit: "+mailpit.err.Error())
	}
	return mailpit.smtpURL, mailpit.apiURL
}

func findMailpit() (smtpURL, apiURL string, err error) {
	smtpURL, apiURL = os.Getenv("SMTP_URL"), strings.TrimRight(os.Getenv("MAILPIT_API_URL"), "/")
	switch {
	case smtpURL != "" && apiURL != "":
		return smtpURL, apiURL, nil
	case smtpURL != "":
		// Without the API the tests cannot see what arrived, and SMTP_URL may
		// name a real mail server: do not send to it.
		return "", "", errors.New("SMTP_URL is set but MAILPIT_API_URL is not; set both to use that Mailpit")
	case apiURL != "":
		return "", "", errors.New("MAILPIT_API_URL is set but SMTP_URL is not; set both to use that Mailpit")
	}
	if answers("127.0.0.1:1025") && answers("127.0.0.1:8025") {
		return "smtp://127.0.0.1:1025", "http://127.0.0.1:8025", nil
	}
	ports, err := startContainer("axllent/mailpit:v1.27", []string{"1025/tcp", "8025/tcp"},
		wait.ForAll(wait.ForListeningPort("1025/tcp"), wait.ForHTTP("/api/v1/info").WithPort("8025/tcp")))
	if err != nil {
		return "", "", err
	}
	return "smtp://" + ports["1025/tcp"], "http://" + ports["8025/tcp"], nil
}
