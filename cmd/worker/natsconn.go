package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// natsConn is a connection to JetStream, and the embedded server behind it
// when there is one.
type natsConn struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	embedded *server.Server
}

// connectNATS connects to NATS_URL, or, when it is empty and embed is true,
// starts an embedded JetStream server with its store under the data dir.
func connectNATS(cfg config, embed bool, logger *slog.Logger) (*natsConn, error) {
	c := &natsConn{}
	url := cfg.NATSURL
	if url == "" && embed {
		ns, err := startEmbedded(cfg)
		if err != nil {
			return nil, err
		}
		c.embedded = ns
		url = ns.ClientURL()
		logger.Info("started embedded NATS JetStream server", slog.String("url", url),
			slog.String("store", filepath.Join(cfg.DataDir, "nats")))
	} else if url == "" {
		url = cfg.embeddedURL()
	}
	nc, err := nats.Connect(url, nats.Name("herald"), nats.MaxReconnects(-1), nats.RetryOnFailedConnect(false))
	if err != nil {
		c.close()
		if cfg.NATSURL == "" && !embed {
			return nil, fmt.Errorf("connect to %s (the embedded server of a running `worker run`; set NATS_URL for another server): %w", url, err)
		}
		return nil, fmt.Errorf("connect to NATS at %s: %w", redactNATSURL(url), withoutURL(err))
	}
	c.nc = nc
	js, err := jetstream.New(nc)
	if err != nil {
		c.close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	c.js = js
	return c, nil
}

func startEmbedded(cfg config) (*server.Server, error) {
	host, portStr, err := net.SplitHostPort(cfg.EmbeddedNATSListen)
	if err != nil {
		return nil, fmt.Errorf("HERALD_EMBEDDED_NATS_LISTEN=%q: %w", cfg.EmbeddedNATSListen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("HERALD_EMBEDDED_NATS_LISTEN=%q: bad port", cfg.EmbeddedNATSListen)
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: "herald-embedded",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   filepath.Join(cfg.DataDir, "nats"),
		NoSigs:     true,
		NoLog:      true,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS server: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded NATS server did not start on %s (is the port taken?)", cfg.EmbeddedNATSListen)
	}
	return ns, nil
}

// close drains the connection and stops the embedded server.
func (c *natsConn) close() {
	if c.nc != nil {
		_ = c.nc.Drain()
		deadline := time.Now().Add(5 * time.Second)
		for !c.nc.IsClosed() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if c.embedded != nil {
		c.embedded.Shutdown()
		c.embedded.WaitForShutdown()
	}
}

// ping checks that the connection is up (for /readyz).
func (c *natsConn) ping(ctx context.Context) error {
	if c.nc.Status() != nats.CONNECTED {
		return fmt.Errorf("nats: %s", c.nc.Status())
	}
	_, err := c.js.AccountInfo(ctx)
	return err
}
