// gopgzip compresses stdin to stdout with github.com/klauspost/pgzip, the reference that
// tests/pgzip_equal.rs compares sideload's port against. It is built in GOPATH mode against
// Debian's golang-github-klauspost-pgzip-dev and golang-github-klauspost-compress-dev
// (GO111MODULE=off GOPATH=/usr/share/gocode), so it needs no network.
//
// Usage: gopgzip [-level N] [-default] [-block BYTES] [-blocks N] [-chunk BYTES]
//
// -default uses pgzip.NewWriter (what containers/image does without a configured level);
// otherwise pgzip.NewWriterLevel(w, level). -block/-blocks call SetConcurrency when set.
// Input is written in chunks of -chunk bytes (0: one Write).
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/klauspost/pgzip"
)

func main() {
	level := flag.Int("level", pgzip.DefaultCompression, "compression level, -2..9")
	useDefault := flag.Bool("default", false, "pgzip.NewWriter instead of NewWriterLevel")
	block := flag.Int("block", 0, "SetConcurrency block size (0: pgzip's default)")
	blocks := flag.Int("blocks", 0, "SetConcurrency blocks (0: pgzip's default)")
	chunk := flag.Int("chunk", 0, "write chunk size in bytes, 0 for one write")
	flag.Parse()

	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	out := bufio.NewWriter(os.Stdout)
	var w *pgzip.Writer
	if *useDefault {
		w = pgzip.NewWriter(out)
	} else {
		w, err = pgzip.NewWriterLevel(out, *level)
		if err != nil {
			fail(err)
		}
	}
	if *block > 0 || *blocks > 0 {
		b, n := *block, *blocks
		if b == 0 {
			b = 1 << 20
		}
		if n == 0 {
			n = 4
		}
		if err := w.SetConcurrency(b, n); err != nil {
			fail(err)
		}
	}
	step := *chunk
	if step <= 0 {
		step = len(data)
	}
	for off := 0; off < len(data); off += step {
		end := off + step
		if end > len(data) {
			end = len(data)
		}
		if _, err := w.Write(data[off:end]); err != nil {
			fail(err)
		}
	}
	if err := w.Close(); err != nil {
		fail(err)
	}
	if err := out.Flush(); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "gopgzip:", err)
	os.Exit(1)
}
