package events_test

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/events"
	"github.com/heraldhq/herald/internal/testinfra"
)

// A worker starting on an existing stream changes only what it is
// configured to: limits an operator set stay.
func TestEnsureStreamKeepsTheSettingsItIsNotGiven(t *testing.T) {
	t.Parallel()
	_, js, st := testinfra.JetStream(t)
	ctx := t.Context()

	s, err := events.EnsureStream(ctx, js, events.StreamConfig{Name: st.Name, SubjectPrefix: st.SubjectPrefix})
	require.NoError(t, err)
	sc := s.CachedInfo().Config
	require.Equal(t, []string{st.SubjectPrefix + ".>"}, sc.Subjects)
	require.Equal(t, 7*24*time.Hour, sc.MaxAge, "a new stream's default")
	require.Equal(t, 2*time.Minute, sc.Duplicates)
	require.Equal(t, jetstream.FileStorage, sc.Storage)

	// An operator limits the stream's size.
	sc.MaxBytes = 1 << 30
	_, err = js.UpdateStream(ctx, sc)
	require.NoError(t, err)

	s, err = events.EnsureStream(ctx, js, events.StreamConfig{Name: st.Name, SubjectPrefix: st.SubjectPrefix, MaxAge: 48 * time.Hour})
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, 48*time.Hour, info.Config.MaxAge, "the configured age applies")
	require.Equal(t, int64(1<<30), info.Config.MaxBytes, "the operator's limit stays")

	s, err = events.EnsureStream(ctx, js, events.StreamConfig{Name: st.Name, SubjectPrefix: st.SubjectPrefix})
	require.NoError(t, err)
	info, err = s.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, 48*time.Hour, info.Config.MaxAge, "an age not given is left as it is")
	require.Equal(t, int64(1<<30), info.Config.MaxBytes)
}

// A stream whose subjects already cover the worker's keeps them; one whose
// subjects lie within the worker's gets the worker's instead.
func TestEnsureStreamSubjects(t *testing.T) {
	t.Parallel()
	_, js, st := testinfra.JetStream(t)
	ctx := t.Context()
	root := strings.Split(st.SubjectPrefix, ".")[0]
	for _, tc := range []struct {
		have, want []string
	}{
		{have: []string{root + ".>"}, want: []string{root + ".>"}},
		{have: []string{st.SubjectPrefix + ".*"}, want: []string{st.SubjectPrefix + ".>"}},
		{have: []string{"other." + root + ".>"}, want: []string{"other." + root + ".>", st.SubjectPrefix + ".>"}},
	} {
		_ = js.DeleteStream(ctx, st.Name) // from the case before
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: st.Name, Subjects: tc.have})
		require.NoError(t, err)
		s, err := events.EnsureStream(ctx, js, events.StreamConfig{Name: st.Name, SubjectPrefix: st.SubjectPrefix})
		require.NoError(t, err, "%v", tc.have)
		info, err := s.Info(ctx)
		require.NoError(t, err)
		require.Equal(t, tc.want, info.Config.Subjects, "%v", tc.have)
	}
}
