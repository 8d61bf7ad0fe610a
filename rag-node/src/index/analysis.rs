//! Text analysis for the keyword index, apart from its I/O: the per-language analyzers, the
//! identifier tokenizer, and how a query string splits into free words and quoted phrases.
//!
//! A language analyzer is: words (letters and digits; accents kept) → lowercase → the
//! language's stop words removed → its Snowball stemmer → accents folded. Stop words and stems
//! are looked up before folding because both lists are written with accents ("não", "é"); the
//! folding after them makes "instalação" and "instalacao" the same term, since users type both.
//!
//! Identifiers (`/etc/fstab`, `ERR-4312`, `sshd_config`, `x86_64`) are also kept whole in a
//! field of their own: the word analyzers split them into parts ("etc", "fstab"), which still
//! match, while the whole token ranks the documents that name exactly that identifier first.

use tantivy::tokenizer::{
    AsciiFoldingFilter, LowerCaser, PreTokenizedStream, PreTokenizedString, RemoveLongFilter,
    SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer, Token, TokenFilter, TokenStream,
    Tokenizer,
};

use crate::language::Language;

/// Longer tokens are dropped (base64 blobs, hashes glued to text), as tantivy's default does.
const MAX_TOKEN_BYTES: usize = 40;
/// Identifiers may be longer (paths), but not unbounded.
const MAX_IDENT_BYTES: usize = 120;

/// How words are analysed: `Stemmed` is what the node uses; `Plain` (lowercase and accent
/// folding only: no stop words, no stemming) is the baseline the quality benchmark compares with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Analysis {
    Stemmed,
    Plain,
}

/// The analyzer of one language's word fields.
pub fn word_analyzer(language: Language, analysis: Analysis) -> TextAnalyzer {
    let base = TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES))
        .filter(LowerCaser);
    match analysis {
        Analysis::Plain => base.filter(AsciiFoldingFilter).build(),
        Analysis::Stemmed => {
            let lang = tantivy_language(language);
            let stop = StopWordFilter::new(lang).unwrap_or_else(|| StopWordFilter::remove([]));
            let base = base.filter(stop);
            if language == Language::Portuguese {
                base.filter(PortugueseSuffixes)
                    .filter(Stemmer::new(lang))
                    .filter(AsciiFoldingFilter)
                    .build()
            } else {
                base.filter(Stemmer::new(lang))
                    .filter(AsciiFoldingFilter)
                    .build()
            }
        }
    }
}

/// The analyzer of language-neutral fields (the filename): words, lowercase, folded.
pub fn neutral_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

/// The analyzer of the identifier field.
pub fn identifier_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(IdentifierTokenizer).build()
}

/// Portuguese typed without accents ("configuracao", "particoes", "informacoes": search boxes
/// and old systems) stems apart from the accented word, because the Snowball rules for
/// "-ção"/"-ções"/"-ões" need the accents. A word without any accent that ends so gets them
/// back before stemming; no unaccented Portuguese word ends in "-cao", "-coes" or "-oes"
/// ("ao" itself is a stop word and is gone by then).
#[derive(Clone)]
struct PortugueseSuffixes;

impl TokenFilter for PortugueseSuffixes {
    type Tokenizer<T: Tokenizer> = PortugueseSuffixesFilter<T>;

    fn transform<T: Tokenizer>(self, tokenizer: T) -> PortugueseSuffixesFilter<T> {
        PortugueseSuffixesFilter(tokenizer)
    }
}

#[derive(Clone)]
struct PortugueseSuffixesFilter<T>(T);

impl<T: Tokenizer> Tokenizer for PortugueseSuffixesFilter<T> {
    type TokenStream<'a> = PortugueseSuffixesStream<T::TokenStream<'a>>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> Self::TokenStream<'a> {
        PortugueseSuffixesStream(self.0.token_stream(text))
    }
}

struct PortugueseSuffixesStream<T>(T);

/// The accented form of an unaccented Portuguese suffix, if `word` has one.
fn restore_accents(word: &str) -> Option<String> {
    if !word.is_ascii() || word.len() < 5 {
        return None;
    }
    for (plain, accented) in [("coes", "ções"), ("cao", "ção"), ("oes", "ões")] {
        if let Some(stem) = word.strip_suffix(plain) {
            return Some(format!("{stem}{accented}"));
        }
    }
    None
}

impl<T: TokenStream> TokenStream for PortugueseSuffixesStream<T> {
    fn advance(&mut self) -> bool {
        if !self.0.advance() {
            return false;
        }
        if let Some(w) = restore_accents(&self.0.token().text) {
            self.0.token_mut().text = w;
        }
        true
    }

    fn token(&self) -> &Token {
        self.0.token()
    }

    fn token_mut(&mut self) -> &mut Token {
        self.0.token_mut()
    }
}

fn tantivy_language(l: Language) -> tantivy::tokenizer::Language {
    use tantivy::tokenizer::Language as T;
    match l {
        Language::Portuguese => T::Portuguese,
        Language::English => T::English,
        Language::Spanish => T::Spanish,
        Language::French => T::French,
        Language::German => T::German,
        Language::Italian => T::Italian,
    }
}

/// Punctuation a token may begin or end with that is not part of it (sentence punctuation,
/// brackets, quotes).
fn is_edge_punctuation(c: char) -> bool {
    matches!(
        c,
        '"' | '\''
            | '`'
            | '('
            | ')'
            | '['
            | ']'
            | '{'
            | '}'
            | '<'
            | '>'
            | ','
            | ';'
            | ':'
            | '!'
            | '?'
            | '.'
            | '«'
            | '»'
            | '“'
            | '”'
            | '‘'
            | '’'
    )
}

/// The identifiers of a text, lowercased: whitespace-separated tokens, trimmed of sentence
/// punctuation, that keep punctuation inside (`/etc/fstab`, `err-4312`, `sshd_config`,
/// `libc6:amd64`) or mix letters and digits (`x86`, `sha256`). Plain words are left to the
/// word fields.
pub fn identifiers(text: &str) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    let mut start = None;
    let push = |from: usize, to: usize, out: &mut Vec<(usize, usize, String)>| {
        let raw = &text[from..to];
        let trimmed_start = raw.len() - raw.trim_start_matches(is_edge_punctuation).len();
        // A leading '/' or '.' is part of a path (`/etc`, `.bashrc`): only sentence punctuation
        // is trimmed at the start, which `is_edge_punctuation` already excludes for '/'.
        let core = raw
            .trim_start_matches(is_edge_punctuation)
            .trim_end_matches(is_edge_punctuation);
        let (from, to) = (from + trimmed_start, from + trimmed_start + core.len());
        if core.is_empty() || core.len() > MAX_IDENT_BYTES {
            return;
        }
        let inner_punct = core
            .trim_matches(|c: char| !c.is_alphanumeric())
            .chars()
            .any(|c| !c.is_alphanumeric())
            || core.starts_with(['/', '.', '~', '$', '-']) && core.len() > 1;
        let letters = core.chars().any(|c| c.is_alphabetic());
        let digits = core.chars().any(|c| c.is_ascii_digit());
        let alnum = core.chars().any(|c| c.is_alphanumeric());
        if alnum && (inner_punct || (letters && digits)) {
            out.push((from, to, core.to_lowercase()));
        }
    };
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            if let Some(s) = start.take() {
                push(s, i, &mut out);
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        push(s, text.len(), &mut out);
    }
    out
}

#[derive(Clone, Default)]
struct IdentifierTokenizer;

impl Tokenizer for IdentifierTokenizer {
    type TokenStream<'a> = PreTokenizedStream;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> PreTokenizedStream {
        let tokens = identifiers(text)
            .into_iter()
            .enumerate()
            .map(|(position, (offset_from, offset_to, text))| Token {
                offset_from,
                offset_to,
                position,
                text,
                position_length: 1,
            })
            .collect();
        PreTokenizedString {
            text: String::new(),
            tokens,
        }
        .into()
    }
}

/// A query split into its free words and its quoted phrases (straight or curly quotes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedQuery {
    pub free: String,
    pub phrases: Vec<String>,
}

pub fn parse_query(q: &str) -> ParsedQuery {
    let is_quote = |c: char| matches!(c, '"' | '“' | '”' | '„' | '«' | '»');
    let mut out = ParsedQuery::default();
    let mut rest = q;
    loop {
        let Some(open) = rest.find(is_quote) else {
            out.free.push_str(rest);
            break;
        };
        let open_len = rest[open..].chars().next().map_or(1, char::len_utf8);
        let after = &rest[open + open_len..];
        let Some(close) = after.find(is_quote) else {
            // An unmatched quote is ordinary text.
            out.free.push_str(&rest[..open]);
            out.free.push(' ');
            out.free.push_str(after);
            break;
        };
        out.free.push_str(&rest[..open]);
        out.free.push(' ');
        let phrase = after[..close].trim();
        if !phrase.is_empty() {
            out.phrases.push(phrase.to_owned());
        }
        let close_len = after[close..].chars().next().map_or(1, char::len_utf8);
        rest = &after[close + close_len..];
    }
    out
}

/// The terms (with positions) an analyzer makes of a text.
pub fn terms(analyzer: &mut TextAnalyzer, text: &str) -> Vec<(usize, String)> {
    let mut stream = analyzer.token_stream(text);
    let mut out = Vec::new();
    while let Some(t) = stream.next() {
        out.push((t.position, t.text.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(l: Language, text: &str) -> Vec<String> {
        terms(&mut word_analyzer(l, Analysis::Stemmed), text)
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }

    #[test]
    fn portuguese_words_are_stemmed_folded_and_stop_words_dropped() {
        let a = words(Language::Portuguese, "Instalação dos pacotes não é difícil");
        let b = words(Language::Portuguese, "instalacoes do pacote dificil");
        assert_eq!(
            words(Language::Portuguese, "configuracao informacoes"),
            words(Language::Portuguese, "configuração informações")
        );
        assert!(!a.contains(&"nao".to_string()), "{a:?}");
        assert!(!a.iter().any(|t| t == "dos"), "{a:?}");
        // Singular and plural meet in one term, and so do accented and unaccented words
        // whose stem has the accent ("difícil" / "dificil").
        for t in &b {
            if t != "do" {
                assert!(a.contains(t), "{t} not in {a:?}");
            }
        }
        let e = words(Language::English, "Installing the packages");
        assert_eq!(e, vec!["instal".to_string(), "packag".to_string()]);
    }

    #[test]
    fn identifiers_stay_whole() {
        let ids: Vec<String> = identifiers(
            "Veja /etc/fstab, o erro ERR-4312 (em sshd_config) e x86_64. Fim: ok? ~/.bashrc",
        )
        .into_iter()
        .map(|(_, _, t)| t)
        .collect();
        assert_eq!(
            ids,
            vec![
                "/etc/fstab",
                "err-4312",
                "sshd_config",
                "x86_64",
                "~/.bashrc"
            ]
        );
        assert!(identifiers("just plain words, here.").is_empty());
    }

    #[test]
    fn quoted_phrases_are_split_from_free_words() {
        let q = parse_query(r#"como montar "ponto de montagem" no “disco externo” agora"#);
        assert_eq!(q.phrases, vec!["ponto de montagem", "disco externo"]);
        assert!(q.free.contains("como montar") && q.free.contains("agora"));
        let q = parse_query(r#"an "unmatched quote"#);
        assert!(q.phrases.is_empty());
        assert!(q.free.contains("unmatched quote"));
    }
}
