package mailer

import (
	"fmt"
	netmail "net/mail"
	"os"
	"path/filepath"
	"strings"

	"github.com/wneessen/go-mail"
)

// writeFile writes gm as an RFC 5322 .eml file named after key, atomically:
// it is written to a temporary file in the same directory, synced, and
// renamed over the final name, so a reader sees either the old or the new
// complete message and a resend replaces the file instead of adding one.
// The Bcc recipients are recorded in a Bcc header.
func (m *Mailer) writeFile(gm *mail.Msg, key string, bcc []*netmail.Address) (err error) {
	if len(bcc) > 0 {
		list := make([]string, len(bcc))
		for i, a := range bcc {
			list[i] = a.String()
		}
		gm.SetGenHeaderPreformatted(mail.Header("Bcc"), strings.Join(list, ", "))
	}
	if err := os.MkdirAll(m.cfg.Dir, 0o750); err != nil {
		return fmt.Errorf("create directory: %w", err)
	}
	// Not named *.eml: a crash before the rename leaves no partial email
	// among the written ones.
	tmp, err := os.CreateTemp(m.cfg.Dir, ".tmp-*.partial")
	if err != nil {
		return fmt.Errorf("create temporary file: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err := gm.WriteTo(tmp); err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o640); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	final := m.fileName(key)
	if err := os.Rename(tmp.Name(), final); err != nil {
		return fmt.Errorf("rename to %s: %w", filepath.Base(final), err)
	}
	// Make the rename itself durable; not every file system supports it.
	if d, err := os.Open(m.cfg.Dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
