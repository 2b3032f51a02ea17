// Command pipe is the benchmark's relay floor: the least any relay can do in
// the one-process-per-connection shape. Started like willi (the connection on
// standard input), it dials the address in its argument and copies bytes both
// ways until either side closes: no parsing, no config, no routing, no
// logging. smtp-source then talks to smtp-sink through it.
package main

import (
	"io"
	"net"
	"os"
)

func main() {
	client, err := net.FileConn(os.Stdin)
	if err != nil {
		os.Exit(1)
	}
	up, err := net.Dial("tcp", os.Args[1])
	if err != nil {
		os.Exit(1)
	}
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, client); up.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { io.Copy(client, up); done <- struct{}{} }()
	<-done
	<-done
}
