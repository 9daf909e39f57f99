//! AMQP errors as the broker reports them: a reply code, a text a person can act on, and
//! the method that failed. Soft codes close the channel; hard codes close the connection.

use std::fmt;

/// An error to report to the client with `channel.close` or `connection.close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpError {
    pub code: u16,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

/// Longest reply text a close frame can carry (a short string).
pub const MAX_REPLY_TEXT: usize = 255;

/// Ends a reply text that was cut to [`MAX_REPLY_TEXT`].
const ELLIPSIS: char = '…';

/// Reply codes of AMQP 0-9-1 the broker uses.
pub mod code {
    pub const CONNECTION_FORCED: u16 = 320;
    pub const NO_ROUTE: u16 = 312;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const FRAME_ERROR: u16 = 501;
    pub const SYNTAX_ERROR: u16 = 502;
    pub const COMMAND_INVALID: u16 = 503;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const UNEXPECTED_FRAME: u16 = 505;
    pub const NOT_ALLOWED: u16 = 530;
    pub const NOT_IMPLEMENTED: u16 = 540;
    pub const INTERNAL_ERROR: u16 = 541;
}

fn code_name(code: u16) -> &'static str {
    match code {
        code::CONNECTION_FORCED => "CONNECTION_FORCED",
        code::NO_ROUTE => "NO_ROUTE",
        code::ACCESS_REFUSED => "ACCESS_REFUSED",
        code::NOT_FOUND => "NOT_FOUND",
        code::RESOURCE_LOCKED => "RESOURCE_LOCKED",
        code::PRECONDITION_FAILED => "PRECONDITION_FAILED",
        code::FRAME_ERROR => "FRAME_ERROR",
        code::SYNTAX_ERROR => "SYNTAX_ERROR",
        code::COMMAND_INVALID => "COMMAND_INVALID",
        code::CHANNEL_ERROR => "CHANNEL_ERROR",
        code::UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
        code::NOT_ALLOWED => "NOT_ALLOWED",
        code::NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
        _ => "INTERNAL_ERROR",
    }
}

impl AmqpError {
    /// An error with `code`; the text is prefixed with the code's name, as RabbitMQ does.
    pub fn new(code: u16, text: impl fmt::Display) -> Self {
        let mut text = format!("{} - {text}", code_name(code));
        // The reply text is a short string: cut it to 255 bytes on a char boundary,
        // ending with "…" so a reader sees it was cut.
        if text.len() > MAX_REPLY_TEXT {
            let mut end = MAX_REPLY_TEXT - ELLIPSIS.len_utf8();
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push(ELLIPSIS);
        }
        Self {
            code,
            text,
            class_id: 0,
            method_id: 0,
        }
    }

    pub fn access_refused(text: impl fmt::Display) -> Self {
        Self::new(code::ACCESS_REFUSED, text)
    }
    pub fn not_found(text: impl fmt::Display) -> Self {
        Self::new(code::NOT_FOUND, text)
    }
    pub fn resource_locked(text: impl fmt::Display) -> Self {
        Self::new(code::RESOURCE_LOCKED, text)
    }
    pub fn precondition_failed(text: impl fmt::Display) -> Self {
        Self::new(code::PRECONDITION_FAILED, text)
    }
    pub fn frame_error(text: impl fmt::Display) -> Self {
        Self::new(code::FRAME_ERROR, text)
    }
    pub fn command_invalid(text: impl fmt::Display) -> Self {
        Self::new(code::COMMAND_INVALID, text)
    }
    pub fn channel_error(text: impl fmt::Display) -> Self {
        Self::new(code::CHANNEL_ERROR, text)
    }
    pub fn unexpected_frame(text: impl fmt::Display) -> Self {
        Self::new(code::UNEXPECTED_FRAME, text)
    }
    pub fn not_allowed(text: impl fmt::Display) -> Self {
        Self::new(code::NOT_ALLOWED, text)
    }
    pub fn not_implemented(text: impl fmt::Display) -> Self {
        Self::new(code::NOT_IMPLEMENTED, text)
    }

    /// Records the method that failed (reported in the close frame).
    pub fn during(mut self, class_id: u16, method_id: u16) -> Self {
        self.class_id = class_id;
        self.method_id = method_id;
        self
    }

    /// Hard errors close the whole connection; soft errors close only the channel.
    pub fn is_connection_error(&self) -> bool {
        !matches!(
            self.code,
            code::NO_ROUTE
                | code::ACCESS_REFUSED
                | code::NOT_FOUND
                | code::RESOURCE_LOCKED
                | code::PRECONDITION_FAILED
        )
    }
}

impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

impl std::error::Error for AmqpError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reply_texts_are_cut_to_a_short_string_on_a_char_boundary() {
        let err = AmqpError::not_found(format!("no queue '{}' in vhost '/'", "é".repeat(300)));
        assert!(err.text.len() <= MAX_REPLY_TEXT);
        assert!(err.text.starts_with("NOT_FOUND - no queue"));
        assert!(err.text.ends_with("é…"), "{}", err.text);
        let _ = amq_protocol::types::ShortString::from(err.text.as_str());
        // Every alignment of a multi-byte char against the cut.
        for pad in 0..4 {
            let text = format!("{}{}", "x".repeat(pad), "€".repeat(100));
            let err = AmqpError::not_found(text);
            assert!(err.text.len() <= MAX_REPLY_TEXT, "{}", err.text.len());
            assert!(
                err.text.len() > MAX_REPLY_TEXT - 6,
                "cut no more than needed"
            );
            assert!(err.text.ends_with("€…"), "{}", err.text);
        }
    }

    #[test]
    fn reply_texts_that_fit_are_kept_whole() {
        let prefix = "NOT_FOUND - ";
        let fits = "a".repeat(MAX_REPLY_TEXT - prefix.len());
        let err = AmqpError::not_found(&fits);
        assert_eq!(err.text, format!("{prefix}{fits}"));
        assert_eq!(err.text.len(), MAX_REPLY_TEXT);
        let over = AmqpError::not_found(format!("{fits}b"));
        assert_eq!(over.text.len(), MAX_REPLY_TEXT);
        assert!(over.text.ends_with("aa…"));
    }
}
