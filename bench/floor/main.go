// Command floor is the benchmark's floor: the least an SMTP responder can do
// in the one-process-per-connection shape. It is started exactly as willi is
// (systemd-socket-activate --accept --inetd: the connection on standard input
// and output), answers banner, EHLO/HELO, MAIL, RCPT, DATA (read to
// <CRLF>.<CRLF> and thrown away), RSET, NOOP and QUIT, and exits. No config,
// no logging, no upstream: whatever willi costs on top of this is willi's.
package main

import (
	"bufio"
	"bytes"
	"os"
)

var (
	banner   = []byte("220 floor ESMTP\r\n")
	ehlo     = []byte("250-floor\r\n250-PIPELINING\r\n250-SIZE 2147483648\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n")
	ok       = []byte("250 2.0.0 Ok\r\n")
	goAhead  = []byte("354 End data with <CR><LF>.<CR><LF>\r\n")
	queued   = []byte("250 2.0.0 Ok: queued\r\n")
	bye      = []byte("221 2.0.0 Bye\r\n")
	unknown  = []byte("502 5.5.2 Error: command not recognized\r\n")
	tooLong  = []byte("500 5.5.2 Error: line too long\r\n")
	endOfMsg = []byte(".\r\n")
)

func main() {
	r := bufio.NewReaderSize(os.Stdin, 4096)
	w := bufio.NewWriterSize(os.Stdout, 512)
	w.Write(banner)
	if w.Flush() != nil {
		return
	}
	for {
		line, err := r.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// Over-long command line: skip to its end.
			for err == bufio.ErrBufferFull {
				_, err = r.ReadSlice('\n')
			}
			if err != nil {
				return
			}
			w.Write(tooLong)
			if w.Flush() != nil {
				return
			}
			continue
		}
		if err != nil {
			return
		}
		var verb [4]byte
		if len(line) >= 4 {
			for i := range verb {
				verb[i] = line[i] | 0x20 // ASCII lower case
			}
		}
		switch string(verb[:]) {
		case "ehlo":
			w.Write(ehlo)
		case "helo", "mail", "rcpt", "rset", "noop":
			w.Write(ok)
		case "data":
			w.Write(goAhead)
			if w.Flush() != nil {
				return
			}
			if !readMessage(r) {
				return
			}
			w.Write(queued)
		case "quit":
			w.Write(bye)
			w.Flush()
			return
		default:
			w.Write(unknown)
		}
		if w.Flush() != nil {
			return
		}
	}
}

// readMessage reads and discards the message up to and including the
// <CRLF>.<CRLF> that ends it. It reports false when the connection ended
// first.
func readMessage(r *bufio.Reader) bool {
	atLineStart := true
	for {
		line, err := r.ReadSlice('\n')
		if err != nil && err != bufio.ErrBufferFull {
			return false
		}
		if atLineStart && err == nil && bytes.Equal(line, endOfMsg) {
			return true
		}
		atLineStart = err == nil
	}
}
