//! `error_chain`: an error with its sources as one line, for logs and health reasons. Shared by
//! the core and plugins because the clients they use (hyper, reqwest, h2) say little in their
//! top-level message: "client error", "connection error"; the cause says what went wrong.

use std::error::Error;

/// `err: cause: cause ...`, walking `source()`. A cause whose text already ends the line so far
/// is left out, since some layers repeat their cause in their own message.
pub fn error_chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|l| l as &(dyn Error + 'static))
        }
    }

    #[test]
    fn causes_follow_the_message() {
        let e = Layer(
            "client error",
            Some(Box::new(Layer(
                "connection error",
                Some(Box::new(Layer("refused", None))),
            ))),
        );
        assert_eq!(error_chain(&e), "client error: connection error: refused");
        assert_eq!(error_chain(&Layer("alone", None)), "alone");
    }

    #[test]
    fn a_cause_repeated_by_its_layer_is_written_once() {
        let e = Layer(
            "handshake failed: broken pipe",
            Some(Box::new(Layer("broken pipe", None))),
        );
        assert_eq!(error_chain(&e), "handshake failed: broken pipe");
    }
}
