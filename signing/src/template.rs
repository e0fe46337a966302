//! Manifest templates: the source's manifest with the blob digests and sizes the device derives
//! cut out (format version 9).
//!
//! An exact bundle must make the device produce the source's manifest byte for byte, so the
//! statement used to carry it whole, with every gzip layer digest in it: 32 bytes of entropy
//! per layer that nothing else in the bundle repeats (a `--exact never` bundle names layers by
//! their diff_ids, which `requires` and `layers` already carry). Yet the device knows those
//! digests once it has the blobs: it hashes every blob it recreates from a recipe, and it holds
//! the blobs it reuses, whose layer it finds by diff_id. So a builder may leave them out: the
//! manifest travels as a *template* whose holes the device fills with the digests and sizes of
//! the blobs it produced, and the signed `manifest_digest` (the source's manifest digest,
//! unchanged) decides whether the filled manifest is the right one. Signing the template and
//! the digest signs the filled bytes: a device that fills a hole wrongly gets another digest
//! and refuses.
//!
//! A hole is `U+0001`, a letter, a layer index and `U+0001` again: `d3` is layer 3's blob
//! digest (`sha256:…`), `s3` its size in decimal. U+0001 can appear in no JSON text (not
//! between tokens, and only escaped inside strings), so a hole is never mistaken for manifest
//! content. Written by hand: no template crate parses a form this small and this strict, and the
//! parser takes untrusted bytes (fuzzed through the statement parser).

use std::fmt;

use crate::names::Digest;

/// What opens and closes a hole.
pub const HOLE_MARK: char = '\u{1}';

/// One hole in a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hole {
    /// The blob digest of the layer at this index.
    Digest(usize),
    /// The blob size, in decimal, of the layer at this index.
    Size(usize),
}

impl Hole {
    /// The layer the hole names.
    pub fn layer(self) -> usize {
        match self {
            Hole::Digest(i) | Hole::Size(i) => i,
        }
    }
}

impl fmt::Display for Hole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hole::Digest(i) => write!(f, "{HOLE_MARK}d{i}{HOLE_MARK}"),
            Hole::Size(i) => write!(f, "{HOLE_MARK}s{i}{HOLE_MARK}"),
        }
    }
}

/// A piece of a template: text as it is, or a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Manifest text.
    Text(&'a str),
    /// A value the device fills in.
    Hole(Hole),
}

/// Why a template cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A hole mark with no mark closing it.
    #[error("the manifest template has a hole that is never closed")]
    Unclosed,
    /// Between two marks, something that is not `d<index>` or `s<index>`.
    #[error("the manifest template has a hole {0:?} that names no layer digest or size")]
    BadHole(String),
}

/// Splits a template into text and holes.
pub fn pieces(template: &str) -> Result<Vec<Piece<'_>>, TemplateError> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find(HOLE_MARK) {
        if start > 0 {
            pieces.push(Piece::Text(&rest[..start]));
        }
        let after = &rest[start + HOLE_MARK.len_utf8()..];
        let end = after.find(HOLE_MARK).ok_or(TemplateError::Unclosed)?;
        pieces.push(Piece::Hole(parse_hole(&after[..end])?));
        rest = &after[end + HOLE_MARK.len_utf8()..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    Ok(pieces)
}

/// `d<index>` or `s<index>`, the index in plain decimal (no sign, no leading zero).
fn parse_hole(inside: &str) -> Result<Hole, TemplateError> {
    let bad = || TemplateError::BadHole(inside.chars().take(40).collect());
    let (kind, number) =
        inside.split_at(inside.find(|c: char| c.is_ascii_digit()).ok_or_else(bad)?);
    let canonical = !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit())
        && (number == "0" || !number.starts_with('0'))
        && number.len() <= 6;
    if !canonical {
        return Err(bad());
    }
    let index: usize = number.parse().map_err(|_| bad())?;
    match kind {
        "d" => Ok(Hole::Digest(index)),
        "s" => Ok(Hole::Size(index)),
        _ => Err(bad()),
    }
}

/// Fills every hole of `template` with `value(hole)`; `None` from `value` stops with that hole.
pub fn fill(
    template: &str,
    mut value: impl FnMut(Hole) -> Option<String>,
) -> Result<String, FillError> {
    let mut out = String::with_capacity(template.len() + 256);
    for piece in pieces(template).map_err(FillError::Template)? {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Hole(hole) => out.push_str(&value(hole).ok_or(FillError::NoValue(hole))?),
        }
    }
    Ok(out)
}

/// Why a template could not be filled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FillError {
    /// The template does not parse.
    #[error(transparent)]
    Template(TemplateError),
    /// The filler has no value for a hole.
    #[error("nothing to fill hole {} of layer {} with", match .0 { Hole::Digest(_) => "digest", Hole::Size(_) => "size" }, .0.layer())]
    NoValue(Hole),
}

/// The template of `manifest` with the digest and size of each layer in `derived` (index,
/// blob digest, blob size) cut out: every `"sha256:<hex>"` of the digest, and every `"size"`
/// member whose value is the size. `None` when some layer's digest or size is not in the
/// manifest as such, or the manifest already holds a hole mark; the caller then names the
/// blobs in the statement as before.
///
/// A size hole may also replace an equal size elsewhere (the config's, say): the device fills
/// it with the same number, so the filled manifest is the source's. [`fill`] of the result with
/// the same values gives `manifest` back, which the caller checks.
pub fn make(manifest: &str, derived: &[(usize, &Digest, u64)]) -> Option<String> {
    if manifest.contains(HOLE_MARK) {
        return None;
    }
    let mut template = manifest.to_owned();
    for &(index, digest, size) in derived {
        if !template.contains(digest.as_str()) {
            return None;
        }
        template = template.replace(digest.as_str(), &Hole::Digest(index).to_string());
        template = cut_sizes(&template, size, Hole::Size(index))?;
    }
    Some(template)
}

/// `template` with the value of every `"size"` member equal to `size` replaced by `hole`;
/// `None` if there is none.
fn cut_sizes(template: &str, size: u64, hole: Hole) -> Option<String> {
    const KEY: &str = "\"size\"";
    let number = size.to_string();
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    let mut found = false;
    while let Some(at) = rest.find(KEY) {
        let after_key = &rest[at + KEY.len()..];
        let value_at = after_key.len()
            - after_key
                .trim_start_matches([' ', '\t', '\n', '\r'])
                .strip_prefix(':')
                .map(|v| v.trim_start_matches([' ', '\t', '\n', '\r']))
                .unwrap_or(after_key)
                .len();
        let value = &after_key[value_at..];
        let whole = value.strip_prefix(number.as_str()).filter(|tail| {
            value_at > 0
                && !tail
                    .starts_with(|c: char| c.is_ascii_digit() || c == '.' || c == 'e' || c == 'E')
        });
        let consumed = at + KEY.len() + value_at;
        out.push_str(&rest[..consumed]);
        match whole {
            Some(tail) => {
                out.push_str(&hole.to_string());
                found = true;
                rest = tail;
            }
            None => rest = &rest[consumed..],
        }
    }
    out.push_str(rest);
    found.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(name: &str) -> Digest {
        Digest::of_bytes(name.as_bytes())
    }

    /// A manifest as Docker's registry client writes them: indented, config first.
    fn manifest(a: &Digest, b: &Digest) -> String {
        format!(
            "{{\n   \"schemaVersion\": 2,\n   \"config\": {{\n      \"mediaType\": \"c\",\n      \"size\": 1469,\n      \"digest\": \"{}\"\n   }},\n   \"layers\": [\n      {{\"mediaType\": \"l\", \"size\": 1469, \"digest\": \"{a}\"}},\n      {{\"mediaType\": \"l\", \"size\" :14690, \"digest\": \"{b}\"}}\n   ]\n}}",
            digest("config")
        )
    }

    #[test]
    fn a_template_filled_with_the_same_values_is_the_manifest() {
        let (a, b) = (digest("a"), digest("b"));
        let text = manifest(&a, &b);
        let template = make(&text, &[(0, &a, 1469), (1, &b, 14690)]).unwrap();
        assert!(!template.contains(a.as_str()) && !template.contains(b.as_str()));
        assert!(!template.contains("14690"));
        let filled = fill(&template, |hole| {
            Some(match hole {
                Hole::Digest(0) => a.to_string(),
                Hole::Digest(1) => b.to_string(),
                Hole::Size(0) => "1469".into(),
                Hole::Size(1) => "14690".into(),
                Hole::Digest(_) | Hole::Size(_) => return None,
            })
        })
        .unwrap();
        assert_eq!(filled, text);
        // The config's size equals layer 0's, so it became the same hole; filled the same.
        assert_eq!(template.matches(&Hole::Size(0).to_string()).count(), 2);
    }

    #[test]
    fn a_layer_absent_from_the_manifest_makes_no_template() {
        let (a, b) = (digest("a"), digest("b"));
        let text = manifest(&a, &b);
        assert_eq!(make(&text, &[(0, &digest("other"), 1469)]), None);
        assert_eq!(make(&text, &[(0, &a, 77)]), None);
        // 146 is a prefix of 1469, not a size of the manifest.
        assert_eq!(make(&text, &[(0, &a, 146)]), None);
        assert_eq!(make("{\"a\":\"\u{1}\"}", &[]), None);
    }

    #[test]
    fn holes_are_parsed_strictly() {
        let pieces = pieces("a\u{1}d0\u{1}b\u{1}s12\u{1}").unwrap();
        assert_eq!(
            pieces,
            vec![
                Piece::Text("a"),
                Piece::Hole(Hole::Digest(0)),
                Piece::Text("b"),
                Piece::Hole(Hole::Size(12)),
            ]
        );
        for bad in [
            "\u{1}d01\u{1}",
            "\u{1}x1\u{1}",
            "\u{1}d\u{1}",
            "\u{1}d-1\u{1}",
            "\u{1}d1",
            "\u{1}s9999999\u{1}",
            "\u{1}d1 \u{1}",
        ] {
            assert!(super::pieces(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            fill("x\u{1}d4\u{1}", |_| None),
            Err(FillError::NoValue(Hole::Digest(4)))
        );
    }
}
