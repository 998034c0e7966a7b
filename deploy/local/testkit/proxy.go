package testkit

import (
	"net"
	"net/url"
	"sync"
	"testing"
)

// Proxy is a TCP proxy to a database that a test can break in the two ways
// a database goes away as seen from a function:
//
//   - Cut drops every connection and refuses new ones, as a server that
//     stopped or a failover in progress does: clients fail at once.
//   - Hold stops every byte in both directions and leaves new connections
//     hanging, as a network partition does: nothing is refused, nothing
//     answers, and only the client's own deadlines end its waits.
//
// Restore ends either. After a hold the bytes held back flow again, as TCP
// retransmits them once a short partition heals.
type Proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	down  bool          // cut: refuse new connections
	open  chan struct{} // closed while bytes may flow
	conns map[net.Conn]bool
}

// NewProxy starts a proxy to the host of dsn and returns it with dsn
// pointed through it. The test's cleanup closes it.
func NewProxy(t testing.TB, dsn string) (*Proxy, string) {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: u.Host, open: make(chan struct{}), conns: map[net.Conn]bool{}}
	close(p.open)
	t.Cleanup(func() { ln.Close(); p.Cut() })
	go p.serve()
	u.Host = ln.Addr().String()
	return p, u.String()
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

func (p *Proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			c.Close()
			continue
		}
		go p.connect(c)
	}
}

// track registers c unless the proxy is cut.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down {
		return false
	}
	p.conns[c] = true
	return true
}

// connect dials the target for client c once bytes may flow.
func (p *Proxy) connect(c net.Conn) {
	p.wait()
	up, err := net.Dial("tcp", p.target)
	if err != nil || !p.track(up) {
		if up != nil {
			up.Close()
		}
		c.Close()
		return
	}
	go p.pipe(up, c)
	go p.pipe(c, up)
}

// pipe copies src to dst, each chunk only while bytes may flow; a closed
// side closes both, also only then (a partition hides the close too).
func (p *Proxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.wait()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				err = werr
			}
		}
		if err != nil {
			p.wait()
			src.Close()
			dst.Close()
			p.mu.Lock()
			delete(p.conns, src)
			delete(p.conns, dst)
			p.mu.Unlock()
			return
		}
	}
}

func (p *Proxy) wait() {
	p.mu.Lock()
	open := p.open
	p.mu.Unlock()
	<-open
}

// Cut drops every connection and refuses new ones until Restore.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for c := range p.conns {
		c.Close()
	}
	p.conns = map[net.Conn]bool{}
	p.release()
}

// Hold stops all traffic, keeping connections open, until Restore.
func (p *Proxy) Hold() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.open:
		p.open = make(chan struct{})
	default: // already held
	}
}

// Restore lets traffic and new connections through again.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = false
	p.release()
}

func (p *Proxy) release() {
	select {
	case <-p.open:
	default:
		close(p.open)
	}
}
