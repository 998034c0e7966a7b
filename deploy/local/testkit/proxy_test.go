package testkit

import (
	"io"
	"net"
	"testing"
	"time"
)

// echoServer accepts connections and echoes what it reads.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

// roundTrip writes b and reads it back within wait; ok is false when
// nothing came back in time.
func roundTrip(t *testing.T, c net.Conn, b string, wait time.Duration) (got string, ok bool) {
	t.Helper()
	if _, err := c.Write([]byte(b)); err != nil {
		return "", false
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, len(b))
	n, err := io.ReadFull(c, buf)
	return string(buf[:n]), err == nil
}

func TestProxyHoldAndCut(t *testing.T) {
	p, _ := NewProxy(t, "postgres://u@"+echoServer(t)+"/db")
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, ok := roundTrip(t, c, "up", time.Second); !ok || got != "up" {
		t.Fatalf("through the proxy: %q, %v", got, ok)
	}

	// Held: the connection stays open and silent; a new one is accepted
	// but gets nothing either.
	p.Hold()
	if got, ok := roundTrip(t, c, "held", 300*time.Millisecond); ok || got != "" {
		t.Fatalf("during the hold: %q came back", got)
	}
	c2, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatalf("a new connection during the hold was refused: %v", err)
	}
	defer c2.Close()
	if _, ok := roundTrip(t, c2, "new", 300*time.Millisecond); ok {
		t.Fatal("a new connection got an answer during the hold")
	}
	// Healed: what was held back arrives, on both.
	p.Restore()
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "held" {
		t.Fatalf("after restore: %q, %v; want the held bytes", buf, err)
	}
	_ = c2.SetReadDeadline(time.Now().Add(time.Second))
	buf = make([]byte, 3)
	if _, err := io.ReadFull(c2, buf); err != nil || string(buf) != "new" {
		t.Fatalf("new connection after restore: %q, %v", buf, err)
	}

	// Cut: open connections end, new ones are closed at once.
	p.Cut()
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("a connection survived the cut")
	}
	c3, err := net.Dial("tcp", p.Addr())
	if err == nil {
		_ = c3.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c3.Read(make([]byte, 1)); err == nil {
			t.Fatal("a new connection was served while cut")
		}
		c3.Close()
	}
}
