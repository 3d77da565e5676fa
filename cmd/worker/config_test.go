package main

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// Settings that cannot work are refused when the worker starts, each named.
func TestConfigRefusesSettingsThatCannotWork(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"HERALD_STREAM_MAX_AGE":  "1m",
		"HERALD_MAX_EVENT_DEPTH": "0",
		"HERALD_ACK_WAIT":        "0s",
		"HERALD_BATCH_WAIT":      "-1ms",
		"HERALD_MAX_ATTEMPTS":    "0",
	}
	_, err := loadConfig(func(k string) string { return env[k] }, nil, nil)
	require.Error(t, err)
	for k := range env {
		require.ErrorContains(t, err, k)
	}

	cfg, err := loadConfig(func(k string) string { return map[string]string{"HERALD_BATCH_WAIT": "0"}[k] }, nil, nil)
	require.NoError(t, err, "the defaults, and no batch wait, are valid")
	require.Zero(t, cfg.BatchWait)
}
