package main

import (
	"errors"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
)

// clientConn returns the one connection this process serves: the socket
// passed by systemd (LISTEN_FDS, fd 3), else standard input and output,
// which may be a socket (inetd, xinetd, tcpserver, StandardInput=socket)
// or a pair of pipes.
func clientConn() (net.Conn, error) {
	if os.Getenv("LISTEN_FDS") != "" {
		files := activation.Files(true)
		if len(files) != 1 {
			return nil, errors.New("LISTEN_FDS set but not exactly one socket passed")
		}
		defer files[0].Close()
		return net.FileConn(files[0])
	}
	if c, err := net.FileConn(os.Stdin); err == nil {
		return c, nil
	}
	return newStdioConn(0, 1)
}

// stdioConn is a net.Conn over two pipes. The descriptors are duplicated and
// made non-blocking so that the Go poller gives them deadlines, which TLS
// and the command timeouts need.
type stdioConn struct {
	r, w *os.File
}

func newStdioConn(rfd, wfd int) (*stdioConn, error) {
	open := func(fd int, name string) (*os.File, error) {
		nfd, err := syscall.Dup(fd)
		if err != nil {
			return nil, err
		}
		syscall.CloseOnExec(nfd)
		if err := syscall.SetNonblock(nfd, true); err != nil {
			syscall.Close(nfd)
			return nil, err
		}
		return os.NewFile(uintptr(nfd), name), nil
	}
	r, err := open(rfd, "stdin")
	if err != nil {
		return nil, err
	}
	w, err := open(wfd, "stdout")
	if err != nil {
		r.Close()
		return nil, err
	}
	return &stdioConn{r: r, w: w}, nil
}

func (p *stdioConn) Read(b []byte) (int, error)  { return p.r.Read(b) }
func (p *stdioConn) Write(b []byte) (int, error) { return p.w.Write(b) }
func (p *stdioConn) Close() error {
	p.r.Close()
	return p.w.Close()
}
func (p *stdioConn) LocalAddr() net.Addr  { return stdioAddr{} }
func (p *stdioConn) RemoteAddr() net.Addr { return stdioAddr{} }
func (p *stdioConn) SetDeadline(t time.Time) error {
	p.SetReadDeadline(t)
	return p.SetWriteDeadline(t)
}
func (p *stdioConn) SetReadDeadline(t time.Time) error  { return p.r.SetReadDeadline(t) }
func (p *stdioConn) SetWriteDeadline(t time.Time) error { return p.w.SetWriteDeadline(t) }

type stdioAddr struct{}

func (stdioAddr) Network() string { return "pipe" }
func (stdioAddr) String() string  { return "pipe" }

// clientAddress finds the client's address: the socket's peer, else
// REMOTE_ADDR/REMOTE_PORT (systemd), else TCPREMOTEIP/TCPREMOTEPORT
// (tcpserver). A PROXY header, when trusted, overrides it later.
func clientAddress(conn net.Conn) (net.IP, int) {
	if a, ok := conn.RemoteAddr().(*net.TCPAddr); ok {
		return unmap(a.IP), a.Port
	}
	for _, env := range [][2]string{{"REMOTE_ADDR", "REMOTE_PORT"}, {"TCPREMOTEIP", "TCPREMOTEPORT"}} {
		if ip := net.ParseIP(os.Getenv(env[0])); ip != nil {
			port, _ := strconv.Atoi(os.Getenv(env[1]))
			return unmap(ip), port
		}
	}
	return nil, 0
}

// localAddress is the address the client connected to, when known.
func localAddress(conn net.Conn) net.Addr {
	if a, ok := conn.LocalAddr().(*net.TCPAddr); ok {
		return &net.TCPAddr{IP: unmap(a.IP), Port: a.Port}
	}
	if ip := net.ParseIP(os.Getenv("TCPLOCALIP")); ip != nil {
		port, _ := strconv.Atoi(os.Getenv("TCPLOCALPORT"))
		return &net.TCPAddr{IP: unmap(ip), Port: port}
	}
	return nil
}

// unmap turns an IPv4-mapped IPv6 address (a v4 client on a [::] socket)
// into plain IPv4.
func unmap(ip net.IP) net.IP {
	if ip4 := ip.To4(); ip4 != nil {
		return ip4
	}
	return ip
}

// inputPending reports, without waiting, whether the client has sent
// anything yet (a peek at the socket's receive queue). A read with an
// already expired deadline cannot tell: Go fails it before reading. Pipes
// cannot be peeked at and report false.
func inputPending(conn net.Conn) bool {
	n, ok, _ := peek(conn)
	return ok && n > 0
}

// peek looks at a socket's receive queue without waiting: n > 0 octets are
// there, n == 0 and no error: the peer closed, err syscall.EAGAIN: nothing
// yet. ok is false for what cannot be peeked at (a pipe, TLS).
func peek(conn net.Conn) (n int, ok bool, err error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return 0, false, nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, false, nil
	}
	var b [1]byte
	rc.Read(func(fd uintptr) bool {
		n, _, err = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true
	})
	return n, true, err
}

// quickAckConn is the connection under a TLS session: before every read it
// sets TCP_QUICKACK, so that what is read is acknowledged at once instead
// of after Linux's delayed-ACK timer (40 ms). Without it every STARTTLS
// costs 40 ms on each side of willi, because the peers' TCP stacks run
// Nagle's algorithm (Postfix and Exim do not set TCP_NODELAY) and a small
// segment waits until the previous one is acknowledged:
//   - a TLS 1.3 client writes its Finished, then its EHLO. Go's server has
//     nothing to send after the Finished (its session ticket went out in
//     the first flight), so willi's kernel delays the ACK and the client's
//     EHLO waits for it.
//   - an OpenSSL server (Postfix) writes a NewSessionTicket after willi's
//     Finished, whether or not willi can use it; willi's EHLO crosses it,
//     the ticket's ACK is delayed, and the server's EHLO reply waits.
//
// TCP_QUICKACK is not sticky (the kernel returns to delayed ACKs once the
// dialogue is interactive), so it is set anew before each read. A
// connection that is not a TCP socket (pipes) is returned as it is.
type quickAckConn struct {
	net.Conn
	rc syscall.RawConn
}

func withQuickAck(conn net.Conn) net.Conn {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return conn
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return conn
	}
	if _, ok := conn.LocalAddr().(*net.TCPAddr); !ok {
		return conn
	}
	return &quickAckConn{Conn: conn, rc: rc}
}

func (c *quickAckConn) Read(b []byte) (int, error) {
	c.rc.Control(func(fd uintptr) {
		syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
	})
	return c.Conn.Read(b)
}
