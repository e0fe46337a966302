// gogzip compresses stdin to stdout with Go's compress/gzip (or compress/flate with -raw), the
// reference that tests/goflate_equal.rs compares sideload's port against.
//
// Usage: gogzip -level N [-name S] [-comment S] [-extra S] [-mtime SECS] [-chunk BYTES] [-flush OFF,OFF,...] [-flush-every N -flush-until M] [-raw]
//
// Input is written in chunks of -chunk bytes (0: one Write); the writer is flushed (Go's
// Flush, a sync flush) after the input offsets listed in -flush, and after every
// -flush-every bytes up to offset -flush-until. Standard library only.
package main

import (
	"bufio"
	"compress/flate"
	"compress/gzip"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

type flushWriter interface {
	io.WriteCloser
	Flush() error
}

func main() {
	level := flag.Int("level", gzip.DefaultCompression, "compression level, -2..9")
	chunk := flag.Int("chunk", 0, "write chunk size in bytes, 0 for one write")
	flushes := flag.String("flush", "", "comma-separated input offsets after which to Flush")
	every := flag.Int("flush-every", 0, "also flush after every this many bytes")
	until := flag.Int("flush-until", 0, "last offset -flush-every flushes at")
	raw := flag.Bool("raw", false, "raw deflate (compress/flate) instead of gzip")
	name := flag.String("name", "", "gzip header Name")
	comment := flag.String("comment", "", "gzip header Comment")
	extra := flag.String("extra", "", "gzip header Extra (set when not empty)")
	mtime := flag.Int64("mtime", 0, "gzip header ModTime, Unix seconds (0: unset)")
	flag.Parse()

	var points []int
	if *flushes != "" {
		for _, f := range strings.Split(*flushes, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				fail(err)
			}
			points = append(points, n)
		}
	}
	if *every > 0 {
		for p := *every; p <= *until; p += *every {
			points = append(points, p)
		}
	}
	sort.Ints(points)
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	out := bufio.NewWriter(os.Stdout)
	var w flushWriter
	if *raw {
		w, err = flate.NewWriter(out, *level)
	} else {
		var z *gzip.Writer
		z, err = gzip.NewWriterLevel(out, *level)
		if err == nil {
			z.Name, z.Comment = *name, *comment
			if *extra != "" {
				z.Extra = []byte(*extra)
			}
			if *mtime != 0 {
				z.ModTime = time.Unix(*mtime, 0)
			}
		}
		w = z
	}
	if err != nil {
		fail(err)
	}
	// Write [from, to) in chunks.
	write := func(from, to int) {
		for from < to {
			end := to
			if *chunk > 0 && from+*chunk < end {
				end = from + *chunk
			}
			if _, err := w.Write(data[from:end]); err != nil {
				fail(err)
			}
			from = end
		}
	}
	at := 0
	for _, p := range points {
		if p > len(data) {
			p = len(data)
		}
		write(at, p)
		at = p
		if err := w.Flush(); err != nil {
			fail(err)
		}
	}
	write(at, len(data))
	if err := w.Close(); err != nil {
		fail(err)
	}
	if err := out.Flush(); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "gogzip:", err)
	os.Exit(1)
}
