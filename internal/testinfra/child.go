package testinfra

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// RunInChild re-runs the current test binary with only t's test, with env
// added to the environment, and fails t with a summary of the output when
// the child fails. Tests use it for code that could crash the process (a
// Go stack overflow), so that a crash fails one test instead of the binary.
func RunInChild(t *testing.T, env ...string) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^"+regexp.QuoteMeta(t.Name())+"$", "-test.v")
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child process failed: %v\n%s", err, childSummary(out))
	}
}

// childSummary keeps the first lines of a child's output and the frames of
// Herald's code from a crash's goroutine dump.
func childSummary(out []byte) string {
	var keep []string
	seen := map[string]bool{}
	lines := strings.Split(string(out), "\n")
	for i, l := range lines {
		herald := strings.Contains(l, "heraldhq/herald/") && !strings.Contains(l, "_test")
		if (i < 8 || herald) && !seen[l] {
			seen[l] = true
			keep = append(keep, l)
			if herald && i+1 < len(lines) {
				keep = append(keep, lines[i+1])
			}
		}
		if len(keep) > 40 {
			break
		}
	}
	return strings.Join(keep, "\n")
}
