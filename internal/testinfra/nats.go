package testinfra

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"
)

var natsServer service

// NATSURL returns the URL of the shared NATS server (with JetStream).
func NATSURL(t testing.TB) string {
	t.Helper()
	return natsServer.get(t, "NATS JetStream", func() (string, error) {
		if u := os.Getenv("NATS_URL"); u != "" {
			return u, nil
		}
		if answers("127.0.0.1:4222") {
			return "nats://127.0.0.1:4222", nil
		}
		ports, err := startContainer("nats:2.11-alpine", []string{"4222/tcp"},
			wait.ForLog("Server is ready"), testcontainers.WithCmd("-js"))
		if err != nil {
			return "", err
		}
		return "nats://" + ports["4222/tcp"], nil
	})
}

// Stream names a test's own stream, subject prefix and consumer.
type Stream struct {
	Name, SubjectPrefix, Consumer string
}

// JetStream connects to the shared NATS server and returns names no other
// test uses. The stream is deleted when the test ends.
func JetStream(t testing.TB) (*nats.Conn, jetstream.JetStream, Stream) {
	t.Helper()
	nc, err := nats.Connect(NATSURL(t))
	if err != nil {
		Unavailable(t, "connect to NATS: "+err.Error())
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	n := Name(t)
	s := Stream{Name: strings.ToUpper(n), SubjectPrefix: n + ".events", Consumer: n + "-worker"}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = js.DeleteStream(ctx, s.Name)
		nc.Close()
	})
	return nc, js, s
}
