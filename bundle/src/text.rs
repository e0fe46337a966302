//! Text that came from input (a tar header, a file name, a device's answer), made safe to show
//! on a terminal or in a log line. Untrusted bytes reach messages through errors of the
//! libraries that read them (tar-rs puts a header's raw name in its errors); escaping at the
//! point where a message is shown covers every such path at once, as OpenSSH does for text a
//! remote side sent.

/// `text` with every control character (C0, DEL, C1) and every bidirectional-formatting
/// character escaped as Rust writes them (`\r`, `\u{1b}`, `\u{202e}`), cut after `max`
/// characters with a note of how many more there were. Printable text, including non-ASCII
/// letters, stays as it is.
pub fn printable(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max * 2));
    for (i, c) in text.chars().enumerate() {
        if i >= max {
            let more = text.chars().count() - i;
            out.push_str(&format!("… ({more} more characters)"));
            break;
        }
        if c.is_control() || is_bidi_control(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Characters that reorder how the text around them is shown ("Trojan Source").
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
}

/// The `Bundle-Name` header value for a bundle file name: header values are ASCII (the
/// registry plugin, like most HTTP stacks, reads only visible ASCII), so every byte of the UTF-8
/// name outside printable ASCII, and `%` itself, is sent percent-encoded (`ü.bundle` ->
/// `%C3%BC.bundle`, `50%.bundle` -> `50%25.bundle`). Names of printable ASCII without `%` go as
/// they are. The plugin percent-decodes the value to get the name back exactly
/// (docs/upload-api.md). `sideload push` and the USB loader both send names this way.
pub fn bundle_name_header(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{bundle_name_header, printable};

    #[test]
    fn control_characters_are_escaped_and_long_text_is_cut() {
        assert_eq!(printable("ü.bundle ok", 100), "ü.bundle ok");
        assert_eq!(
            printable("\u{89}PNG\r\n\u{1a}\n\u{1b}[2J\u{7}", 100),
            "\\u{89}PNG\\r\\n\\u{1a}\\n\\u{1b}[2J\\u{7}"
        );
        assert_eq!(printable("a\u{202e}b", 100), "a\\u{202e}b");
        assert_eq!(printable("abcdef", 3), "abc… (3 more characters)");
        assert_eq!(printable("abc", 3), "abc");
    }

    #[test]
    fn bundle_names_go_as_percent_encoded_utf8() {
        assert_eq!(bundle_name_header("app v2.bundle"), "app v2.bundle");
        assert_eq!(bundle_name_header("ü.bundle"), "%C3%BC.bundle");
        assert_eq!(bundle_name_header("é.bundle"), "%C3%A9.bundle");
        assert_eq!(bundle_name_header("50%.bundle"), "50%25.bundle");
        for name in [
            "ü.bundle",
            "日本語 v2.bundle",
            "50%.bundle",
            "a\u{7f}.bundle",
        ] {
            let value = bundle_name_header(name);
            assert!(value.bytes().all(|b| (0x20..0x7f).contains(&b)), "{value}");
        }
    }
}
