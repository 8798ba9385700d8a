//! Text from a stream of byte-level tokens, released only in whole UTF-8 characters.

/// The bytes of a stream of tokens, released as text only up to the last whole UTF-8
/// character (an emoji spans several byte-level tokens).
#[derive(Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds a token's bytes; returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // An error with no length is an incomplete character at the end: hold it.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            // Bytes that can never be text (a model may emit them): replace them.
            Err(_) => {
                let text = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                return text;
            }
        };
        let text = String::from_utf8_lossy(&self.pending[..valid]).into_owned();
        self.pending.drain(..valid);
        text
    }
    /// The end of the stream: what is still held is the start of a character the
    /// generation stopped inside (`max_tokens` reached mid-emoji), which is dropped
    /// rather than sent as U+FFFD.
    pub fn finish(&mut self) -> String {
        self.pending.clear();
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::Utf8Stream;

    #[test]
    fn characters_split_across_tokens_come_out_whole_and_a_cut_one_not_at_all() {
        let mut s = Utf8Stream::default();
        let smile = "😍".as_bytes();
        assert_eq!(s.push(b"a"), "a");
        assert_eq!(s.push(&smile[..1]), "");
        assert_eq!(s.push(&smile[1..3]), "");
        assert_eq!(s.push(&smile[3..]), "😍");
        assert_eq!(s.push(&[b'b', smile[0], smile[1]]), "b");
        assert_eq!(s.finish(), "", "the cut emoji is dropped, not U+FFFD");
        // Bytes that can never be text are replaced where they stand.
        assert_eq!(s.push(&[0xFF, b'c']), "\u{FFFD}c");
    }
}
