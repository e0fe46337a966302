//! The payload's compression: a series of frames, each compressed with zstd or LZMA2 (the
//! statement says which), each optionally primed with a dictionary of base data.
//!
//! LZMA2 is the default: on tar data (binaries, text) it is 7-10 % smaller than zstd at its
//! highest levels, which is what a 1 Mbit/s link pays for; zstd decodes several times faster,
//! for links where bytes are cheap. Both keep a window bounded by `2^window_log` bytes that the
//! statement declares, so a device knows the memory it needs before it starts.
//!
//! LZMA2 comes from `lzma-rust2` (pure Rust): the `liblzma` bindings do not expose the preset
//! dictionary that a frame's base-data dictionary needs.

use std::io::{self, BufRead, Read, Write};

use lzma_rust2::{Lzma2Options, Lzma2Reader, Lzma2Writer};
pub use sideload_signing::PayloadCodec;

/// Compression settings of a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodecSettings {
    /// Which codec.
    pub codec: PayloadCodec,
    /// Level: zstd 1-22, LZMA2 0-9.
    pub level: i32,
    /// Window (zstd) or dictionary (LZMA2) size log; the decoder needs `2^window_log` bytes.
    pub window_log: u32,
    /// zstd worker threads (0 = none); LZMA2 always encodes on one thread, as one stream, so
    /// that every byte can match every earlier one.
    pub threads: u32,
}

impl CodecSettings {
    /// The default level of a codec: the highest that still builds a 1 GB image in minutes.
    pub fn default_level(codec: PayloadCodec) -> i32 {
        match codec {
            PayloadCodec::Zstd => 19,
            PayloadCodec::Lzma2 => 9,
        }
    }

    /// The levels a codec takes.
    pub fn levels(codec: PayloadCodec) -> std::ops::RangeInclusive<i32> {
        match codec {
            PayloadCodec::Zstd => 1..=22,
            PayloadCodec::Lzma2 => 0..=9,
        }
    }

    fn lzma2_options(&self, dictionary: &[u8]) -> Lzma2Options {
        let mut options = Lzma2Options::with_preset(self.level.clamp(0, 9) as u32);
        options.lzma_options.dict_size = 1 << self.window_log;
        if self.level >= 9 {
            // xz's "extreme" variant of level 9: longer matches searched deeper. Worth its time
            // here, where every byte crosses a slow link.
            options.lzma_options.nice_len = 273;
            options.lzma_options.depth_limit = 512;
        }
        if !dictionary.is_empty() {
            options.lzma_options.preset_dict = Some(dictionary.to_vec());
        }
        options
    }
}

enum Encoder<W: Write> {
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Lzma2(Box<Lzma2Writer<W>>),
}

/// Writes the payload as a series of frames, each with its own dictionary.
pub struct FrameEncoder<W: Write> {
    current: Option<Encoder<W>>,
    settings: CodecSettings,
}

impl<W: Write> FrameEncoder<W> {
    /// Starts the first frame, with `dictionary` (raw content; empty for none).
    pub fn new(inner: W, settings: CodecSettings, dictionary: &[u8]) -> io::Result<Self> {
        let mut frames = FrameEncoder {
            current: None,
            settings,
        };
        frames.start(inner, dictionary)?;
        Ok(frames)
    }

    fn start(&mut self, inner: W, dictionary: &[u8]) -> io::Result<()> {
        let s = &self.settings;
        self.current = Some(match s.codec {
            PayloadCodec::Zstd => {
                let mut zstd =
                    zstd::stream::write::Encoder::with_dictionary(inner, s.level, dictionary)?;
                zstd.long_distance_matching(true)?;
                zstd.window_log(s.window_log)?;
                zstd.include_checksum(false)?;
                zstd.multithread(s.threads)?;
                Encoder::Zstd(zstd)
            }
            PayloadCodec::Lzma2 => Encoder::Lzma2(Box::new(Lzma2Writer::new(
                inner,
                s.lzma2_options(dictionary),
            ))),
        });
        Ok(())
    }

    /// Ends the current frame and starts one compressed with `dictionary`.
    pub fn next_frame(&mut self, dictionary: &[u8]) -> io::Result<()> {
        let inner = self.finish_current()?;
        self.start(inner, dictionary)
    }

    fn finish_current(&mut self) -> io::Result<W> {
        match self.current.take().expect("a frame is always open") {
            Encoder::Zstd(z) => z.finish(),
            Encoder::Lzma2(l) => l.finish(),
        }
    }

    /// The stream written to.
    pub fn get_ref(&self) -> &W {
        match self.current.as_ref().expect("a frame is always open") {
            Encoder::Zstd(z) => z.get_ref(),
            Encoder::Lzma2(l) => l.inner(),
        }
    }

    /// Ends the last frame.
    pub fn finish(mut self) -> io::Result<W> {
        self.finish_current()
    }

    fn encoder(&mut self) -> &mut dyn Write {
        match self.current.as_mut().expect("a frame is always open") {
            Encoder::Zstd(z) => z,
            Encoder::Lzma2(l) => l.as_mut(),
        }
    }
}

impl<W: Write> Write for FrameEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.encoder().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.encoder().flush()
    }
}

enum Decoder<R: BufRead> {
    Zstd(zstd::stream::read::Decoder<'static, R>),
    Lzma2(Box<Lzma2Reader<R>>),
}

/// The payload's frames read as one stream. Each frame is decoded on its own (so a frame
/// cannot run on into the next), and [`Frames::next_frame`] starts the next one with its
/// dictionary when a FRAME record says so.
pub struct Frames<R: BufRead> {
    current: Option<Decoder<R>>,
    codec: PayloadCodec,
    window_log: u32,
}

impl<R: BufRead> Frames<R> {
    /// Starts decoding the first frame (no dictionary), with the window capped at
    /// `2^window_log`.
    pub fn new(inner: R, codec: PayloadCodec, window_log: u32) -> io::Result<Self> {
        let mut frames = Frames {
            current: None,
            codec,
            window_log,
        };
        frames.start(inner, &[])?;
        Ok(frames)
    }

    fn start(&mut self, inner: R, dictionary: &[u8]) -> io::Result<()> {
        self.current = Some(match self.codec {
            PayloadCodec::Zstd => {
                let mut zstd = zstd::stream::read::Decoder::with_dictionary(inner, dictionary)?;
                zstd.window_log_max(self.window_log)?;
                Decoder::Zstd(zstd.single_frame())
            }
            PayloadCodec::Lzma2 => {
                // The dictionary buffer grows as the stream needs it, up to this size.
                let dict = (!dictionary.is_empty()).then_some(dictionary);
                Decoder::Lzma2(Box::new(Lzma2Reader::new(
                    inner,
                    1 << self.window_log,
                    dict,
                )))
            }
        });
        Ok(())
    }

    /// Ends the current frame, which must have no decoded bytes left, and starts the next one
    /// with `dictionary` (raw content; empty for none).
    pub fn next_frame(&mut self, dictionary: &[u8]) -> io::Result<()> {
        let mut byte = [0u8; 1];
        if self.read(&mut byte)? != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the frame goes on past its FRAME record",
            ));
        }
        let inner = self.take_inner();
        self.start(inner, dictionary)
    }

    fn take_inner(&mut self) -> R {
        match self.current.take().expect("checked by the caller") {
            Decoder::Zstd(z) => z.finish(),
            Decoder::Lzma2(l) => l.into_inner(),
        }
    }

    /// The compressed stream, positioned after the last frame read.
    pub fn into_inner(mut self) -> R {
        self.take_inner()
    }
}

impl<R: BufRead> Read for Frames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.current.as_mut() {
            Some(Decoder::Zstd(frame)) => frame.read(buf),
            Some(Decoder::Lzma2(frame)) => frame.read(buf),
            // A failed `next_frame` closed the stream; reading on is an error, not a panic.
            None => Err(io::Error::other(
                "the payload stream failed at a frame switch",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(codec: PayloadCodec) -> CodecSettings {
        CodecSettings {
            codec,
            level: CodecSettings::default_level(codec),
            window_log: 20,
            threads: 0,
        }
    }

    /// Frames with and without dictionaries read back as one stream, and a frame that goes on
    /// past its switch point is refused.
    #[test]
    fn frames_round_trip_with_dictionaries() {
        for codec in [PayloadCodec::Zstd, PayloadCodec::Lzma2] {
            let dictionary = b"usr/lib/python3/dist-packages/ header text ".repeat(50);
            let mut enc = FrameEncoder::new(Vec::new(), settings(codec), &[]).unwrap();
            enc.write_all(b"first frame ").unwrap();
            enc.next_frame(&dictionary).unwrap();
            enc.write_all(&dictionary[..400]).unwrap();
            enc.next_frame(&[]).unwrap();
            enc.write_all(b"third").unwrap();
            let bytes = enc.finish().unwrap();

            let mut frames = Frames::new(&bytes[..], codec, 20).unwrap();
            let mut first = [0u8; 12];
            frames.read_exact(&mut first).unwrap();
            assert_eq!(&first, b"first frame ");
            frames.next_frame(&dictionary).unwrap();
            let mut second = vec![0u8; 400];
            frames.read_exact(&mut second).unwrap();
            assert_eq!(second, dictionary[..400]);
            frames.next_frame(&[]).unwrap();
            let mut rest = Vec::new();
            frames.read_to_end(&mut rest).unwrap();
            assert_eq!(rest, b"third");
            assert!(
                frames.into_inner().is_empty(),
                "{codec:?}: all input consumed"
            );

            // Switching before the frame's end is an error.
            let mut early = Frames::new(&bytes[..], codec, 20).unwrap();
            let mut part = [0u8; 5];
            early.read_exact(&mut part).unwrap();
            assert!(early.next_frame(&dictionary).is_err(), "{codec:?}");
        }
    }

    /// LZMA2 with a dictionary of the data it then compresses costs almost nothing: the point
    /// of frame dictionaries.
    #[test]
    fn lzma2_dictionary_is_used() {
        let data: Vec<u8> = (0..20_000u32)
            .flat_map(|i| (i * 7919).to_le_bytes())
            .collect();
        let plain = {
            let mut e = FrameEncoder::new(Vec::new(), settings(PayloadCodec::Lzma2), &[]).unwrap();
            e.write_all(&data).unwrap();
            e.finish().unwrap().len()
        };
        let primed = {
            let mut e =
                FrameEncoder::new(Vec::new(), settings(PayloadCodec::Lzma2), &data).unwrap();
            e.write_all(&data).unwrap();
            e.finish().unwrap().len()
        };
        assert!(primed * 20 < plain, "primed {primed} vs plain {plain}");
    }
}
