//! The one Unicode normalization of the node: every extracted text and every query goes
//! through [`nfc`], so the same words compare, embed and cache the same.

use std::borrow::Cow;

use unicode_normalization::UnicodeNormalization;

/// Text in Unicode normal form C: "ã" typed as one code point or as "a" + combining tilde (as
/// macOS file systems and some PDFs write it) becomes the same text, so it embeds, matches
/// and caches the same.
pub fn nfc(text: &str) -> Cow<'_, str> {
    if unicode_normalization::is_nfc(text) {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text.nfc().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composes_and_borrows_what_is_already_composed() {
        assert_eq!(nfc("Sec\u{0327}a\u{0303}o"), "Seção");
        assert!(matches!(nfc("já normal"), Cow::Borrowed(_)));
    }
}
