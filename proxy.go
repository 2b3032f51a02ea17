package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// proxyHeaderTimeout bounds how long a trusted peer may take to send its
// PROXY header.
const proxyHeaderTimeout = 10 * time.Second

// untrustedHeaderWait is how long willi, with [proxy_protocol] set, waits
// before greeting a peer that is not trusted, so that a PROXY header that
// peer sends is seen, and refused, before any banner.
const untrustedHeaderWait = 500 * time.Millisecond

// readProxyHeader reads the PROXY v1/v2 header that a trusted peer must
// send before anything else and returns the client address it names.
// LOCAL (health check) headers carry no address: the peer's own is kept.
func readProxyHeader(conn net.Conn, r *bufio.Reader) (*net.TCPAddr, error) {
	conn.SetReadDeadline(time.Now().Add(proxyHeaderTimeout))
	defer conn.SetReadDeadline(time.Time{})
	h, err := proxyproto.Read(r)
	if err != nil {
		return nil, err
	}
	if h.Command.IsLocal() {
		return nil, nil
	}
	if h.TransportProtocol != proxyproto.TCPv4 && h.TransportProtocol != proxyproto.TCPv6 {
		return nil, fmt.Errorf("PROXY header for %v, want TCP", h.TransportProtocol)
	}
	src, _, ok := h.TCPAddrs()
	if !ok {
		return nil, errors.New("PROXY header without TCP addresses")
	}
	return src, nil
}

// looksLikeProxyHeader reports data that starts like a PROXY header (v1
// "PROXY " or the v2 signature).
func looksLikeProxyHeader(b []byte) bool {
	const v1, v2 = "PROXY ", "\r\n\r\n\x00\r\nQUIT\n"
	n := min(len(b), len(v2))
	return n >= 5 && (string(b[:min(n, len(v1))]) == v1[:min(n, len(v1))] || string(b[:n]) == v2[:n])
}

// writeProxyHeader sends a PROXY header naming the client to an upstream
// whose policy asks for one (client_address = "proxy-v1" / "proxy-v2").
func writeProxyHeader(conn net.Conn, kind string, c clientFacts) error {
	version := byte(1)
	if kind == addrProxyV2 {
		version = 2
	}
	src := &net.TCPAddr{IP: c.ip, Port: c.port}
	dst, _ := c.local.(*net.TCPAddr)
	var h *proxyproto.Header
	if c.ip == nil || dst == nil {
		// Nothing true to say: LOCAL (v2) or UNKNOWN (v1).
		h = &proxyproto.Header{Version: version, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
	} else {
		if (src.IP.To4() == nil) != (dst.IP.To4() == nil) {
			// Families must match in a PROXY header; name the upstream
			// connection's own end instead.
			if la, ok := conn.LocalAddr().(*net.TCPAddr); ok {
				dst = la
			}
		}
		h = proxyproto.HeaderProxyFromAddrs(version, src, dst)
	}
	_, err := h.WriteTo(conn)
	return err
}
