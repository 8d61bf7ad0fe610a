//! The languages the keyword index analyses, and how a chunk's language is decided.
//!
//! Every node decides a chunk's language by itself from what the replicated index log carries
//! (the chunk texts and the document's metadata), so the decision must be deterministic: the
//! given language when the document has one (`language` in its metadata), else whatlang's
//! trigram detection restricted to the configured languages (whatlang is a pure function of
//! the text), else the document's most frequent detected language, else the first configured
//! one.

use std::fmt;

/// The metadata key that carries a document's given language.
pub const METADATA_KEY: &str = "language";

/// A language with a stemmer and a stop-word list in the keyword index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Language {
    Portuguese,
    English,
    Spanish,
    French,
    German,
    Italian,
}

impl Language {
    pub const ALL: [Language; 6] = [
        Language::Portuguese,
        Language::English,
        Language::Spanish,
        Language::French,
        Language::German,
        Language::Italian,
    ];

    /// ISO 639-1 code: what the API, the config and the metadata use.
    pub fn code(self) -> &'static str {
        match self {
            Language::Portuguese => "pt",
            Language::English => "en",
            Language::Spanish => "es",
            Language::French => "fr",
            Language::German => "de",
            Language::Italian => "it",
        }
    }

    /// Accepts ISO 639-1 and 639-3 codes and English names, any case (`pt`, `por`, `Portuguese`,
    /// `pt-BR`).
    pub fn parse(s: &str) -> Option<Language> {
        let s = s.trim().to_ascii_lowercase();
        // A region (`pt-BR`, `en_US`) does not change the analyzer.
        let base = s.split(['-', '_']).next().unwrap_or("");
        Language::ALL.into_iter().find(|l| {
            let (iso3, name) = match l {
                Language::Portuguese => ("por", "portuguese"),
                Language::English => ("eng", "english"),
                Language::Spanish => ("spa", "spanish"),
                Language::French => ("fra", "french"),
                Language::German => ("deu", "german"),
                Language::Italian => ("ita", "italian"),
            };
            base == l.code() || base == iso3 || s == name
        })
    }

    fn whatlang(self) -> whatlang::Lang {
        match self {
            Language::Portuguese => whatlang::Lang::Por,
            Language::English => whatlang::Lang::Eng,
            Language::Spanish => whatlang::Lang::Spa,
            Language::French => whatlang::Lang::Fra,
            Language::German => whatlang::Lang::Deu,
            Language::Italian => whatlang::Lang::Ita,
        }
    }

    fn from_whatlang(l: whatlang::Lang) -> Option<Language> {
        Language::ALL.into_iter().find(|x| x.whatlang() == l)
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Parses a list of language codes (config), refusing unknown ones and duplicates.
pub fn parse_list(codes: &[String]) -> Result<Vec<Language>, String> {
    let mut out = Vec::new();
    for c in codes {
        let l = Language::parse(c).ok_or_else(|| unknown(c))?;
        if out.contains(&l) {
            return Err(format!("language {c:?} is listed twice"));
        }
        out.push(l);
    }
    if out.is_empty() {
        return Err("at least one language is needed".into());
    }
    Ok(out)
}

/// The message for a language the keyword index has no analyzer for.
pub fn unknown(code: &str) -> String {
    let known: Vec<&str> = Language::ALL.iter().map(|l| l.code()).collect();
    format!(
        "unknown language {code:?} (supported: {})",
        known.join(", ")
    )
}

/// Detection below this many letters is too unreliable to use; the document's language is
/// taken instead.
const MIN_LETTERS: usize = 40;

/// The language of one text among `allowed`, when whatlang is confident of it.
pub fn detect(text: &str, allowed: &[Language]) -> Option<Language> {
    if allowed.len() == 1 {
        return Some(allowed[0]);
    }
    if text
        .chars()
        .filter(|c| c.is_alphabetic())
        .take(MIN_LETTERS)
        .count()
        < MIN_LETTERS
    {
        return None;
    }
    let detector =
        whatlang::Detector::with_allowlist(allowed.iter().map(|l| l.whatlang()).collect());
    let info = detector.detect(text)?;
    // With an allowlist, whatlang's reliability flag is too strict for two close candidates;
    // a clear margin in its confidence is what matters here.
    if info.confidence() < 0.2 {
        return None;
    }
    Language::from_whatlang(info.lang()).filter(|l| allowed.contains(l))
}

/// The language of each of a document's chunks (see the module comment for the rule).
pub fn assign(texts: &[&str], given: Option<Language>, allowed: &[Language]) -> Vec<Language> {
    if let Some(g) = given {
        return vec![g; texts.len()];
    }
    let detected: Vec<Option<Language>> = texts.iter().map(|t| detect(t, allowed)).collect();
    let mut counts = vec![0usize; allowed.len()];
    for l in detected.iter().flatten() {
        if let Some(i) = allowed.iter().position(|a| a == l) {
            counts[i] += 1;
        }
    }
    // Ties go to the earlier configured language: deterministic.
    let mut best = 0;
    for (i, &c) in counts.iter().enumerate() {
        if c > counts[best] {
            best = i;
        }
    }
    let fallback = allowed[best];
    detected
        .into_iter()
        .map(|d| d.unwrap_or(fallback))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PT_EN: [Language; 2] = [Language::Portuguese, Language::English];

    #[test]
    fn codes_parse_in_their_usual_spellings() {
        assert_eq!(Language::parse("pt"), Some(Language::Portuguese));
        assert_eq!(Language::parse("pt-BR"), Some(Language::Portuguese));
        assert_eq!(Language::parse("POR"), Some(Language::Portuguese));
        assert_eq!(Language::parse("English"), Some(Language::English));
        assert_eq!(Language::parse("en_US"), Some(Language::English));
        assert_eq!(Language::parse("xx"), None);
        assert!(parse_list(&["pt".into(), "por".into()]).is_err());
        assert!(parse_list(&[]).is_err());
        assert!(unknown("xx").contains("pt, en"));
    }

    #[test]
    fn paragraphs_are_detected_and_short_ones_follow_their_document() {
        let pt = "O gerenciador de pacotes instala e remove programas do sistema, resolvendo as dependências automaticamente.";
        let en = "The package manager installs and removes programs from the system, resolving their dependencies automatically.";
        assert_eq!(detect(pt, &PT_EN), Some(Language::Portuguese));
        assert_eq!(detect(en, &PT_EN), Some(Language::English));
        assert_eq!(detect("ERR-4312 /etc/fstab", &PT_EN), None);
        let langs = assign(&[pt, "ERR-4312 /etc/fstab", pt], None, &PT_EN);
        assert_eq!(langs, vec![Language::Portuguese; 3]);
        let langs = assign(&[en, pt, "sshd_config"], None, &PT_EN);
        // One of each: the tie goes to the first configured language.
        assert_eq!(
            langs,
            vec![
                Language::English,
                Language::Portuguese,
                Language::Portuguese
            ]
        );
        assert_eq!(
            assign(&[en], Some(Language::Portuguese), &PT_EN),
            vec![Language::Portuguese]
        );
    }
}
