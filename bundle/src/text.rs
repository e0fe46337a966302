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

#[cfg(test)]
mod tests {
    use super::printable;

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
}
