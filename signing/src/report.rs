//! How every sideload binary prints an error: its message and each of its causes on a line of
//! their own, each said once.
//!
//! A wrapper often quotes its source already (`cannot read x.toml: No such file or directory`),
//! and printing the chain as well (anyhow's `{:#}`) said the cause twice. [`cause_lines`] keeps
//! a cause only when no line before it already contains its text.

use std::error::Error;

/// The messages of `err` and of its sources, outermost first, without a message that an earlier
/// line already contains (whole or as part) and without empty ones.
pub fn cause_lines(err: &(dyn Error + 'static)) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        let text = text.trim();
        if !text.is_empty() && !lines.iter().any(|line| line.contains(text)) {
            lines.push(text.to_owned());
        }
        next = e.source();
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapped(String, Option<std::io::Error>);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_ref().map(|e| e as _)
        }
    }

    fn not_found() -> std::io::Error {
        std::io::Error::from(std::io::ErrorKind::NotFound)
    }

    #[test]
    fn a_source_the_message_quotes_is_not_repeated() {
        let io = not_found();
        let err = Wrapped(format!("cannot read /x/policy.toml: {io}"), Some(io));
        assert_eq!(
            cause_lines(&err),
            [format!("cannot read /x/policy.toml: {}", not_found())]
        );
    }

    #[test]
    fn a_source_the_message_does_not_quote_gets_its_own_line() {
        let err = Wrapped("cannot read /x/policy.toml".into(), Some(not_found()));
        assert_eq!(
            cause_lines(&err),
            [
                "cannot read /x/policy.toml".to_owned(),
                not_found().to_string()
            ]
        );
    }

    #[test]
    fn empty_messages_are_dropped() {
        let err = Wrapped("  ".into(), Some(not_found()));
        assert_eq!(cause_lines(&err), [not_found().to_string()]);
    }
}
