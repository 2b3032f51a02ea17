// Command smtpload is the load generator of the container bench and tests:
// built statically and copied into the booted test container, it drives
// willi over the container's own loopback.
//
//	smtpload -addr 127.0.0.1:25 -n 500 -c 20 [-mail] [-sources 1]
//	smtpload -addr 127.0.0.1:25 -burst 200 [-sources 200]
//
// The first form runs n sessions, c at a time: banner, EHLO, (with -mail a
// message to rcpt@example.com,) QUIT. The second opens burst connections
// at once, waits for every first reply, then ends each session with QUIT.
// -sources N spreads the clients over N local addresses 127.0.0.1,
// 127.0.0.2, ... (the per-source limits count by address); -src A,B,...
// names them instead (IPv6 too). With -hold, the burst's sessions wait
// after their first reply until every connection has its own: all of them
// are open at once when the server counts them.
//
// It prints one line of key=value fields: sessions, ok (a 220 banner and a
// 221 to QUIT), refused (a 421 first reply), closed (closed without a
// reply), failed, elapsed_s, rate (ok sessions per second), and the
// connect-to-first-reply latency: banner_p50_ms, banner_p99_ms,
// banner_max_ms, within2s (first replies that came within 2 s) and
// refused_codes (the enhanced codes of the 421s, code:count).
// Exit status 1 when a session failed (not counting refusals and closes,
// which the caller judges).
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

type result struct {
	first   string // the first reply's code, "" when closed without one
	status  string // its enhanced status code, if any
	banner  time.Duration
	ok      bool
	failure string
}

func main() {
	addr := flag.String("addr", "127.0.0.1:25", "server `ADDR`")
	n := flag.Int("n", 100, "sessions to run")
	c := flag.Int("c", 1, "sessions at a time")
	burst := flag.Int("burst", 0, "open this many connections at once instead (-n and -c ignored)")
	sources := flag.Int("sources", 1, "local addresses 127.0.0.1 .. to spread the clients over")
	srcList := flag.String("src", "", "comma-separated local addresses to spread the clients over (instead of -sources)")
	hold := flag.Bool("hold", false, "burst: keep every session open until all have their first reply")
	mail := flag.Bool("mail", false, "send one message per session")
	timeout := flag.Duration("timeout", 30*time.Second, "bound on each reply")
	flag.Parse()

	total, conc := *n, *c
	var gate chan struct{}
	var firsts *sync.WaitGroup
	if *burst > 0 {
		total, conc = *burst, *burst
		gate = make(chan struct{})
		if *hold {
			firsts = &sync.WaitGroup{}
			firsts.Add(total)
		}
	}
	var srcs []*net.TCPAddr
	for _, a := range strings.Split(*srcList, ",") {
		if a = strings.TrimSpace(a); a != "" {
			ip := net.ParseIP(a)
			if ip == nil {
				fmt.Fprintf(os.Stderr, "smtpload: bad -src address %q\n", a)
				os.Exit(2)
			}
			srcs = append(srcs, &net.TCPAddr{IP: ip})
		}
	}
	results := make([]result, total)
	var next sync.Mutex
	i := 0
	var wg sync.WaitGroup
	var ready sync.WaitGroup
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		ready.Add(1)
		go func() {
			defer wg.Done()
			once := false
			for {
				next.Lock()
				k := i
				i++
				next.Unlock()
				if k >= total {
					if !once {
						ready.Done()
					}
					return
				}
				if !once {
					ready.Done()
					once = true
				}
				if gate != nil {
					<-gate
				}
				local := localAddr(k, *sources)
				if len(srcs) > 0 {
					local = srcs[k%len(srcs)]
				}
				results[k] = session(*addr, local, *mail, *timeout, firsts)
			}
		}()
	}
	if gate != nil {
		ready.Wait()
		start = time.Now()
		close(gate)
	}
	wg.Wait()
	elapsed := time.Since(start)
	report(results, elapsed)
}

// localAddr is the k-th client's local address: 127.0.0.1 .. spread over
// n addresses (127.0.0.1 to 127.0.0.254, then 127.0.1.1 ...).
func localAddr(k, n int) *net.TCPAddr {
	j := k % max(n, 1)
	return &net.TCPAddr{IP: net.IPv4(127, 0, byte(j/254), byte(j%254+1))}
}

// session runs one session; with firsts (-hold), it signals its first
// reply (or failure) there and waits for all the others' before going on.
func session(addr string, local *net.TCPAddr, mail bool, timeout time.Duration, firsts *sync.WaitGroup) (r result) {
	d := net.Dialer{LocalAddr: local, Timeout: timeout}
	t0 := time.Now()
	arrived := false
	arrive := func() {
		if firsts != nil && !arrived {
			arrived = true
			firsts.Done()
			firsts.Wait()
		}
	}
	defer arrive()
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		// Without the addresses: failures are counted by kind.
		msg := err.Error()
		if i := strings.LastIndex(msg, ": "); i >= 0 {
			msg = msg[i+2:]
		}
		r.failure = "dial: " + msg
		return r
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	status := ""
	reply := func() (string, error) {
		conn.SetReadDeadline(time.Now().Add(timeout))
		code := ""
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return code, err
			}
			if len(line) < 4 {
				return "", fmt.Errorf("short reply %q", line)
			}
			code = line[:3]
			if f := strings.Fields(line[4:]); len(f) > 0 && strings.Count(f[0], ".") == 2 {
				status = f[0]
			}
			if line[3] != '-' {
				return code, nil
			}
		}
	}
	send := func(s string) error {
		conn.SetWriteDeadline(time.Now().Add(timeout))
		_, err := conn.Write([]byte(s + "\r\n"))
		return err
	}
	code, err := reply()
	r.banner = time.Since(t0)
	r.first, r.status = code, status
	arrive()
	if err != nil {
		if code == "" {
			r.first = ""
			return r // closed without a reply
		}
		r.failure = "banner: " + err.Error()
		return r
	}
	if code != "220" {
		return r
	}
	steps := [][2]string{{"EHLO load.example", "250"}}
	if mail {
		steps = append(steps,
			[2]string{"MAIL FROM:<load@example.com>", "250"},
			[2]string{"RCPT TO:<rcpt@example.com>", "250"},
			[2]string{"DATA", "354"},
			[2]string{"Subject: load\r\n\r\nOne line.\r\n.", "250"})
	}
	steps = append(steps, [2]string{"QUIT", "221"})
	for _, st := range steps {
		if err := send(st[0]); err != nil {
			r.failure = st[0] + ": " + err.Error()
			return r
		}
		got, err := reply()
		if err != nil || got != st[1] {
			r.failure = fmt.Sprintf("%s: got %q %v", strings.Fields(st[0])[0], got, err)
			return r
		}
	}
	r.ok = true
	return r
}

func report(results []result, elapsed time.Duration) {
	var ok, refused, closed, failed, within int
	codes := map[string]int{}
	var lat []time.Duration
	failures := map[string]int{}
	for _, r := range results {
		switch {
		case r.ok:
			ok++
		case r.failure != "":
			failed++
			failures[r.failure]++
		case r.first == "421":
			refused++
			codes[r.status]++
		case r.first == "":
			closed++
		default:
			failed++
			failures["first reply "+r.first]++
		}
		if r.first != "" {
			lat = append(lat, r.banner)
			if r.banner <= 2*time.Second {
				within++
			}
		}
	}
	slices.Sort(lat)
	pct := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
	}
	var cs []string
	for k, v := range codes {
		cs = append(cs, fmt.Sprintf("%s:%d", k, v))
	}
	slices.Sort(cs)
	fmt.Printf("sessions=%d ok=%d refused=%d closed=%d failed=%d elapsed_s=%.3f rate=%.1f banner_p50_ms=%.1f banner_p99_ms=%.1f banner_max_ms=%.1f within2s=%d refused_codes=%s\n",
		len(results), ok, refused, closed, failed, elapsed.Seconds(), float64(ok)/elapsed.Seconds(),
		pct(0.5), pct(0.99), pct(1), within, strings.Join(cs, ","))
	for f, k := range failures {
		fmt.Fprintf(os.Stderr, "smtpload: %d x %s\n", k, f)
	}
	if failed > 0 {
		os.Exit(1)
	}
}
