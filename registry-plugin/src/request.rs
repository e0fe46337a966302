//! What a request to the daemon's own API asks for, decided from its method, path and headers
//! before anything reads its body: which route it takes ([`route`]), whether its body can be
//! read at all ([`check_body_codings`]), and the upload headers ([`upload_offset`],
//! [`upload_length`], [`BundleName`]). Pure functions over header values, so every refusal is
//! tested (and fuzzed) without a socket; [`crate::server`] maps a [`RequestError`] to its
//! answer.
//!
//! The rules follow what the most trusted servers do with the same input:
//!
//! - **Transfer codings**: only `chunked`, once (RFC 9112 §6.1: a server that receives a
//!   transfer coding it does not understand should answer 501). nginx, Apache httpd and Go's
//!   `net/http` answer 501 to anything else, including `gzip, chunked`; decoding gzip here would
//!   put an unbounded decompressor in front of the head check, for no client that needs it.
//! - **Content codings** on an upload body (`Content-Encoding: gzip`): 415 with
//!   `Accept-Encoding: identity` (RFC 9110 §15.5.16). The bytes of an upload are the bundle file
//!   itself, never a coded representation of it.
//! - **Numbers** (`Upload-Offset`, `Upload-Length`): one or more ASCII digits and nothing else,
//!   as tus and RFC 9110's `Content-Length` grammar say; `-1`, `+5`, ` 5`, `banana` and a header
//!   given twice are 400.
//! - **Methods**: a path the API has but a method it does not take is 405 with `Allow`
//!   (RFC 9110 §15.5.6), never 404; `HEAD` is taken wherever `GET` is (§9.1).

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::Method;

/// Longest `Bundle-Name`, in bytes of its decoded UTF-8 (a file name on ext4 and FAT).
pub const MAX_BUNDLE_NAME: usize = 255;

/// Why a request is refused before its body is read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A header is malformed (400 `bad_request`).
    #[error("{0}")]
    BadHeader(String),
    /// The `Bundle-Name` header breaks a rule (400 `bad_bundle_name`).
    #[error("{0}")]
    BadBundleName(String),
    /// A transfer coding other than `chunked` (501 `unsupported_transfer_coding`).
    #[error("the request body uses Transfer-Encoding {0:?}; this device takes only `chunked` (or a Content-Length)")]
    TransferCoding(String),
    /// A content coding on an upload body (415 `unsupported_content_coding`).
    #[error(
        "the request body uses Content-Encoding {0:?}; upload bodies are the bundle's raw bytes"
    )]
    ContentCoding(String),
}

/// The API route a request takes (paths below `/sideload/v1`, split on `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `POST /uploads`.
    CreateUpload,
    /// `HEAD /uploads/ID` (`head` true) or `GET /uploads/ID`.
    UploadStatus {
        /// The upload id.
        id: &'a str,
        /// Answer without a body.
        head: bool,
    },
    /// `PATCH` or `PUT /uploads/ID`.
    Append {
        /// The upload id.
        id: &'a str,
        /// `PUT`: the offset header is optional and an incomplete upload is a 409.
        put: bool,
    },
    /// `DELETE /uploads/ID`.
    DeleteUpload(&'a str),
    /// `GET /admin/uploads`.
    ListUploads,
    /// `DELETE /admin/uploads/ID`.
    AdminDeleteUpload(&'a str),
    /// `DELETE /admin/bundles/ID`: drops a bundle the device holds (waiting or queued).
    AdminDeleteBundle(&'a str),
    /// `GET /bundles`.
    Bundles,
    /// `GET /bundles/ID`.
    Bundle(&'a str),
    /// `GET /journal`.
    Journal,
    /// `GET /inventory`.
    Inventory,
    /// `GET /health`.
    Health,
}

/// Why no route takes a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unrouted {
    /// No such path (404).
    NotFound,
    /// The path exists; these methods are what it takes (405 with `Allow`).
    MethodNotAllowed(&'static str),
}

const READ: &str = "GET, HEAD";

/// The route for `method` on `segments` (the path below `/sideload/v1` split on `/`, without
/// empty leading or trailing parts). Every path the API has answers every method: a route,
/// or 405 naming the methods it takes.
pub fn route<'a>(method: &Method, segments: &[&'a str]) -> Result<Route<'a>, Unrouted> {
    let read = method == Method::GET || method == Method::HEAD;
    let only = |ok: bool, route: Route<'a>, allow: &'static str| {
        if ok {
            Ok(route)
        } else {
            Err(Unrouted::MethodNotAllowed(allow))
        }
    };
    match segments {
        ["uploads"] => only(method == Method::POST, Route::CreateUpload, "POST"),
        ["uploads", id] => match *method {
            Method::HEAD | Method::GET => Ok(Route::UploadStatus {
                id,
                head: method == Method::HEAD,
            }),
            Method::PATCH => Ok(Route::Append { id, put: false }),
            Method::PUT => Ok(Route::Append { id, put: true }),
            Method::DELETE => Ok(Route::DeleteUpload(id)),
            _ => Err(Unrouted::MethodNotAllowed("GET, HEAD, PATCH, PUT, DELETE")),
        },
        ["admin", "uploads"] => only(read, Route::ListUploads, READ),
        ["admin", "uploads", id] => only(
            method == Method::DELETE,
            Route::AdminDeleteUpload(id),
            "DELETE",
        ),
        ["admin", "bundles", id] => only(
            method == Method::DELETE,
            Route::AdminDeleteBundle(id),
            "DELETE",
        ),
        ["bundles"] => only(read, Route::Bundles, READ),
        ["bundles", id] => only(read, Route::Bundle(id), READ),
        ["journal"] => only(read, Route::Journal, READ),
        ["inventory"] => only(read, Route::Inventory, READ),
        ["health"] => only(read, Route::Health, READ),
        _ => Err(Unrouted::NotFound),
    }
}

/// Refuses a body this daemon cannot read as the bytes it is: a transfer coding other than a
/// single `chunked` (hyper has already refused one that does not end in `chunked`), and, on
/// an upload body (`upload` true), any content coding but `identity`.
pub fn check_body_codings(headers: &HeaderMap, upload: bool) -> Result<(), RequestError> {
    // Every coding listed, in order, over all the header's lines (`a, b` or two lines).
    let codings = |name: HeaderName| -> Vec<String> {
        let mut out = Vec::new();
        for value in headers.get_all(name) {
            let text = String::from_utf8_lossy(value.as_bytes());
            out.extend(
                text.split(',')
                    .map(|c| c.trim().to_ascii_lowercase())
                    .filter(|c| !c.is_empty()),
            );
        }
        out
    };
    let transfer = codings(hyper::header::TRANSFER_ENCODING);
    if !transfer.is_empty() && transfer != ["chunked"] {
        return Err(RequestError::TransferCoding(transfer.join(", ")));
    }
    if upload {
        let content = codings(hyper::header::CONTENT_ENCODING);
        if content.iter().any(|c| c != "identity") {
            return Err(RequestError::ContentCoding(content.join(", ")));
        }
    }
    Ok(())
}

/// The one value of header `name`, if present; a header given twice is refused (two values
/// of an offset or a name cannot both be meant).
fn single<'h>(
    headers: &'h HeaderMap,
    name: &'static str,
) -> Result<Option<&'h HeaderValue>, RequestError> {
    // HeaderMap looks names up case-insensitively only from a lowercase `&str`.
    let mut values = headers.get_all(name.to_ascii_lowercase()).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(RequestError::BadHeader(format!(
            "{name} is given more than once; send it once"
        )));
    }
    Ok(first)
}

/// A non-negative decimal number: ASCII digits only (no sign, no spaces, no `0x`), that fits
/// in 64 bits.
fn number(headers: &HeaderMap, name: &'static str) -> Result<Option<u64>, RequestError> {
    let Some(value) = single(headers, name)? else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    let parsed = if !bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit) {
        std::str::from_utf8(bytes).ok().and_then(|s| s.parse().ok())
    } else {
        None
    };
    parsed.map(Some).ok_or_else(|| {
        RequestError::BadHeader(format!(
            "{name} {} is not a byte count: give one non-negative decimal number",
            shown(bytes)
        ))
    })
}

/// `Upload-Offset`: where the body's bytes go; `None` when absent.
pub fn upload_offset(headers: &HeaderMap) -> Result<Option<u64>, RequestError> {
    number(headers, "Upload-Offset")
}

/// `Upload-Length`: the whole file's length; `None` when absent.
pub fn upload_length(headers: &HeaderMap) -> Result<Option<u64>, RequestError> {
    number(headers, "Upload-Length")
}

/// A header value for a message: quoted, escaped, at most 64 characters.
fn shown(bytes: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(bytes).chars().take(64).collect();
    let more = if bytes.len() > text.len() { "…" } else { "" };
    format!("{text:?}{more}")
}

/// The name of a delivery, from `Bundle-Name`: what messages, the journal and events call it.
/// Only a name, never a path: at most [`MAX_BUNDLE_NAME`] bytes of UTF-8, no control
/// characters, no `/`.
///
/// A header carries only visible ASCII, so a name with other characters arrives
/// percent-encoded as UTF-8 (`%C3%BC.bundle` is `ü.bundle`), as the USB loader sends a stick's
/// file names. Decoding follows the URL standard's percent-decode: a `%` not followed by two
/// hex digits stays as it is, so `100%.bundle` is itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleName(String);

impl BundleName {
    /// Checks a decoded name.
    pub fn new(name: &str) -> Result<BundleName, RequestError> {
        let bad = |why: String| RequestError::BadBundleName(why);
        if name.is_empty() {
            return Err(bad(
                "Bundle-Name is empty; leave the header out to let the device name the upload"
                    .into(),
            ));
        }
        if name.len() > MAX_BUNDLE_NAME {
            return Err(bad(format!(
                "Bundle-Name is {} bytes long (decoded); the limit is {MAX_BUNDLE_NAME} bytes of UTF-8",
                name.len()
            )));
        }
        if let Some(c) = name.chars().find(|c| c.is_control()) {
            return Err(bad(format!(
                "Bundle-Name contains the control character {c:?}; a name has none"
            )));
        }
        if name.contains('/') {
            return Err(bad(
                "Bundle-Name contains '/'; it is a file name, not a path".into(),
            ));
        }
        Ok(BundleName(name.to_owned()))
    }

    /// From the raw header value: visible ASCII, percent-decoded, then checked.
    pub fn from_header(value: &HeaderValue) -> Result<BundleName, RequestError> {
        let raw = value.as_bytes();
        if let Some(&b) = raw.iter().find(|&&b| !(b == b' ' || b.is_ascii_graphic())) {
            return Err(RequestError::BadBundleName(format!(
                "Bundle-Name contains the byte 0x{b:02x}; send a name that is not ASCII percent-encoded as UTF-8 (ü is %C3%BC)"
            )));
        }
        let decoded = percent_decode(raw);
        let name = String::from_utf8(decoded).map_err(|_| {
            RequestError::BadBundleName(format!(
                "Bundle-Name {} does not decode to UTF-8; percent-encode the name's UTF-8 bytes",
                shown(raw)
            ))
        })?;
        BundleName::new(&name)
    }

    /// The `Bundle-Name` of a request; `None` when absent.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<BundleName>, RequestError> {
        single(headers, "Bundle-Name")?
            .map(BundleName::from_header)
            .transpose()
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// The URL standard's percent-decode: `%XX` with two hex digits becomes that byte; anything
/// else, including a lone `%`, stays as it is.
pub fn percent_decode(input: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' && i + 2 < input.len() {
            if let (Some(h), Some(l)) = (hex(input[i + 1]), hex(input[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn offsets_and_lengths_are_plain_decimal_numbers() {
        assert_eq!(upload_offset(&headers(&[])), Ok(None));
        assert_eq!(
            upload_offset(&headers(&[("upload-offset", b"0")])),
            Ok(Some(0))
        );
        assert_eq!(
            upload_length(&headers(&[("upload-length", b"18446744073709551615")])),
            Ok(Some(u64::MAX))
        );
        for bad in [
            &b"-1"[..],
            b"banana",
            b"+5",
            b"5 x",
            b"0x10",
            b"",
            b"1e3",
            b"18446744073709551616",
        ] {
            let err = upload_offset(&headers(&[("upload-offset", bad)])).unwrap_err();
            assert!(
                matches!(&err, RequestError::BadHeader(m) if m.contains("Upload-Offset")),
                "{bad:?}: {err:?}"
            );
        }
        // Given twice: which one was meant?
        assert!(upload_offset(&headers(&[
            ("upload-offset", b"1"),
            ("upload-offset", b"1")
        ]))
        .is_err());
    }

    #[test]
    fn only_a_single_chunked_transfer_coding_is_read() {
        assert_eq!(check_body_codings(&headers(&[]), true), Ok(()));
        assert_eq!(
            check_body_codings(&headers(&[("transfer-encoding", b"Chunked")]), true),
            Ok(())
        );
        for bad in [
            &b"gzip, chunked"[..],
            b"chunked, chunked",
            b"identity",
            b"deflate,chunked",
        ] {
            assert!(matches!(
                check_body_codings(&headers(&[("transfer-encoding", bad)]), false),
                Err(RequestError::TransferCoding(_))
            ));
        }
        // Split over two lines is the same list.
        assert!(check_body_codings(
            &headers(&[
                ("transfer-encoding", b"gzip"),
                ("transfer-encoding", b"chunked")
            ]),
            false
        )
        .is_err());
        // Content codings matter only where the body is the bundle's bytes.
        let gz = headers(&[("content-encoding", b"gzip")]);
        assert!(matches!(
            check_body_codings(&gz, true),
            Err(RequestError::ContentCoding(_))
        ));
        assert_eq!(check_body_codings(&gz, false), Ok(()));
        assert_eq!(
            check_body_codings(&headers(&[("content-encoding", b"identity")]), true),
            Ok(())
        );
    }

    #[test]
    fn bundle_names_are_percent_decoded_utf8_names_not_paths() {
        let name = |v: &[u8]| BundleName::from_header(&HeaderValue::from_bytes(v).unwrap());
        assert_eq!(name(b"app-v2.bundle").unwrap().as_str(), "app-v2.bundle");
        assert_eq!(name(b"%C3%BC.bundle").unwrap().as_str(), "\u{fc}.bundle");
        assert_eq!(
            name(b"%c3%a9 x.bundle").unwrap().as_str(),
            "\u{e9} x.bundle"
        );
        // A `%` that starts no escape is itself (the URL standard's percent-decode).
        assert_eq!(name(b"100%.bundle").unwrap().as_str(), "100%.bundle");
        assert_eq!(name(b"50%zz%4").unwrap().as_str(), "50%zz%4");
        assert_eq!(name(b"a%25b").unwrap().as_str(), "a%b");
        // Exactly 255 bytes decoded is fine, 256 is not, however it was encoded.
        let ue = "%C3%BC".repeat(127);
        assert_eq!(
            name(format!("{ue}x").as_bytes()).unwrap().as_str().len(),
            255
        );
        let long = name(format!("{ue}xy").as_bytes()).unwrap_err();
        assert!(long.to_string().contains("255"), "{long}");
        assert!(name("x".repeat(300).as_bytes())
            .unwrap_err()
            .to_string()
            .contains("255"));
        for bad in [
            &b""[..],
            b"%FF.bundle",
            b"a%2Fb",
            b"a/b",
            b"a%00b",
            b"a%0Ab",
            b"a%7Fb",
            b"a%C2%85b",
        ] {
            assert!(
                matches!(name(bad), Err(RequestError::BadBundleName(_))),
                "{:?} was taken",
                String::from_utf8_lossy(bad)
            );
        }
        // Raw bytes outside visible ASCII: told to percent-encode.
        let raw = name(b"\xc3\xbc.bundle").unwrap_err();
        assert!(raw.to_string().contains("percent-encoded"), "{raw}");
        assert!(BundleName::from_headers(&headers(&[
            ("bundle-name", b"a"),
            ("bundle-name", b"b")
        ]))
        .is_err());
    }

    #[test]
    fn every_api_path_answers_every_method() {
        let r = |m: Method, p: &'static str| {
            let segments: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
            route(&m, &segments)
        };
        assert_eq!(r(Method::POST, "uploads"), Ok(Route::CreateUpload));
        for m in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert_eq!(r(m, "uploads"), Err(Unrouted::MethodNotAllowed("POST")));
        }
        assert_eq!(
            r(Method::POST, "uploads/abc"),
            Err(Unrouted::MethodNotAllowed("GET, HEAD, PATCH, PUT, DELETE"))
        );
        assert_eq!(
            r(Method::PUT, "uploads/abc"),
            Ok(Route::Append {
                id: "abc",
                put: true
            })
        );
        assert_eq!(r(Method::HEAD, "bundles"), Ok(Route::Bundles));
        for p in [
            "bundles",
            "bundles/sha256:ab",
            "journal",
            "inventory",
            "health",
            "admin/uploads",
        ] {
            assert_eq!(
                r(Method::POST, p),
                Err(Unrouted::MethodNotAllowed(READ)),
                "{p}"
            );
            assert_eq!(
                r(Method::DELETE, p),
                Err(Unrouted::MethodNotAllowed(READ)),
                "{p}"
            );
        }
        for p in ["admin/uploads/x", "admin/bundles/sha256:ab"] {
            assert_eq!(
                r(Method::GET, p),
                Err(Unrouted::MethodNotAllowed("DELETE")),
                "{p}"
            );
        }
        assert_eq!(
            r(Method::DELETE, "admin/bundles/sha256:ab"),
            Ok(Route::AdminDeleteBundle("sha256:ab"))
        );
        for p in [
            "",
            "nope",
            "uploads/a/b",
            "bundles/a/b",
            "admin",
            "health/x",
        ] {
            assert_eq!(r(Method::GET, p), Err(Unrouted::NotFound), "{p}");
        }
    }
}
