// Package smtptest is the tests' side of an SMTP conversation: a raw client
// that keeps every reply line exactly as received, the DATA transmission
// form of a message, a self-signed certificate, a private CA and a free
// loopback port. Willi's in-process tests and the black-box tests in test/
// share it; willi itself does not import it.
package smtptest
