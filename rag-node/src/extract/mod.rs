//! Documents → structured text blocks, each with its source location.
//!
//! The format is detected from the bytes (magic numbers, zip directory, UTF-8 validity); the file
//! name only breaks ties between text formats. Every extractor works on untrusted input: sizes,
//! page/row counts and XML depth are capped, and [`extract`] turns an extractor panic into an
//! error for that document alone.

mod docx;
mod html;
mod pdf;
mod sheet;
mod text;
mod zipguard;

use rag_api::SourceLocation;

/// Structural role of a block; the chunker keeps headings with what follows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    Heading(u8),
    Paragraph,
    ListItem,
    TableRow,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub text: String,
    pub kind: BlockKind,
    pub location: SourceLocation,
}

#[derive(Debug, Clone)]
pub struct Extracted {
    pub format: Format,
    /// Pages (PDF), sheets (spreadsheets) or 1 for flowing text.
    pub pages: u32,
    pub blocks: Vec<Block>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Pdf,
    Docx,
    Xlsx,
    Xls,
    Ods,
    Text,
    Markdown,
    Csv,
    Html,
}

impl Format {
    /// The `content_type` recorded on documents and used by search filters.
    pub fn name(self) -> &'static str {
        match self {
            Format::Pdf => "pdf",
            Format::Docx => "docx",
            Format::Xlsx => "xlsx",
            Format::Xls => "xls",
            Format::Ods => "ods",
            Format::Text => "text",
            Format::Markdown => "markdown",
            Format::Csv => "csv",
            Format::Html => "html",
        }
    }
}

/// Resource limits for one document (the `[limits]` section of the configuration).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Total uncompressed bytes a zip-based document may expand to.
    pub max_uncompressed_bytes: u64,
    /// Largest allowed uncompressed/compressed ratio of a zip member (zip bombs).
    pub max_compression_ratio: u64,
    pub max_pages: u32,
    pub max_rows: u64,
    pub max_xml_depth: usize,
    /// Extracted text beyond this is an error rather than silently cut.
    pub max_text_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_uncompressed_bytes: 512 << 20,
            max_compression_ratio: 200,
            max_pages: 10_000,
            max_rows: 1_000_000,
            max_xml_depth: 256,
            max_text_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ExtractError {
    #[error("unsupported document format: {0}")]
    Unsupported(String),
    #[error("the document is empty (0 bytes)")]
    Empty,
    #[error("the PDF is encrypted; upload an unencrypted copy")]
    Encrypted,
    #[error("no extractable text: {0}")]
    NoText(String),
    #[error("document exceeds a limit: {0}")]
    LimitExceeded(String),
    #[error("malformed {format} document: {message}")]
    Malformed {
        format: &'static str,
        message: String,
    },
    #[error("the extractor crashed on this document: {0}")]
    Panicked(String),
}

impl ExtractError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ExtractError::Unsupported(_) => "unsupported_format",
            ExtractError::Empty => "empty_document",
            ExtractError::Encrypted => "encrypted_document",
            ExtractError::NoText(_) => "no_text",
            ExtractError::LimitExceeded(_) => "limit_exceeded",
            ExtractError::Malformed { .. } => "malformed_document",
            ExtractError::Panicked(_) => "extractor_crashed",
        }
    }

    pub(crate) fn malformed(format: Format, e: impl std::fmt::Display) -> Self {
        ExtractError::Malformed {
            format: format.name(),
            message: e.to_string(),
        }
    }
}

/// Decides the format from content first, then from the name's extension.
pub fn detect(bytes: &[u8], filename: &str) -> Result<Format, ExtractError> {
    if bytes.is_empty() {
        return Err(ExtractError::Empty);
    }
    let ext = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    if bytes.len() >= 5
        && (bytes.starts_with(b"%PDF-")
            || bytes[..bytes.len().min(1024)]
                .windows(5)
                .any(|w| w == b"%PDF-"))
    {
        return Ok(Format::Pdf);
    }
    if bytes.starts_with(b"PK\x03\x04") {
        return zipguard::detect_zip_format(bytes);
    }
    if bytes.starts_with(&[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1]) {
        // A directory of untrusted bytes: a reader panic fails this document only.
        return std::panic::catch_unwind(|| detect_ole2(bytes)).unwrap_or_else(|_| {
            Err(ExtractError::malformed(
                Format::Xls,
                "unreadable OLE2 directory",
            ))
        });
    }
    if !text::looks_like_text(bytes) {
        return Err(ExtractError::Unsupported(
            "binary content that is neither PDF, DOCX, XLSX, XLS nor ODS".into(),
        ));
    }
    Ok(match ext.as_str() {
        "md" | "markdown" => Format::Markdown,
        "csv" => Format::Csv,
        "html" | "htm" | "xhtml" => Format::Html,
        _ if text::looks_like_html(bytes) => Format::Html,
        _ => Format::Text,
    })
}

/// OLE2 compound files hold the legacy Office formats (and password-protected OOXML); the
/// streams in their root directory say which.
fn detect_ole2(bytes: &[u8]) -> Result<Format, ExtractError> {
    let cf = cfb::CompoundFile::open(std::io::Cursor::new(bytes)).map_err(|e| {
        ExtractError::Unsupported(format!("an OLE2 compound file that cannot be read: {e}"))
    })?;
    let has = |name: &str| cf.is_stream(name);
    if has("/Workbook") || has("/Book") {
        return Ok(Format::Xls);
    }
    if has("/EncryptedPackage") {
        return Err(ExtractError::Encrypted);
    }
    Err(ExtractError::Unsupported(if has("/WordDocument") {
        "a Word 97–2003 document (.doc) is not supported: save it as .docx or PDF".into()
    } else if has("/PowerPoint Document") {
        "a PowerPoint 97–2003 presentation (.ppt) is not supported: save it as PDF".into()
    } else {
        "an OLE2 compound file that is not an Excel 97–2003 workbook (.xls)".into()
    }))
}

fn nfc_in_place(text: &mut String) {
    if let std::borrow::Cow::Owned(n) = crate::unicode::nfc(text) {
        *text = n;
    }
}

/// Detects the format and extracts blocks. Never panics: a crashing extractor becomes
/// [`ExtractError::Panicked`] for this document.
pub fn extract(bytes: &[u8], filename: &str, limits: &Limits) -> Result<Extracted, ExtractError> {
    let format = detect(bytes, filename)?;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match format {
        Format::Pdf => pdf::extract(bytes, limits),
        Format::Docx => docx::extract(bytes, limits),
        Format::Xlsx | Format::Xls | Format::Ods => sheet::extract(bytes, format, limits),
        Format::Text | Format::Markdown | Format::Csv => text::extract(bytes, format, limits),
        Format::Html => html::extract(bytes, limits),
    }));
    let mut extracted = match result {
        Ok(r) => r?,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            return Err(ExtractError::Panicked(msg));
        }
    };
    for b in &mut extracted.blocks {
        nfc_in_place(&mut b.text);
        b.location.heading_path.iter_mut().for_each(nfc_in_place);
    }
    let total: usize = extracted.blocks.iter().map(|b| b.text.len()).sum();
    if total > limits.max_text_bytes {
        return Err(ExtractError::LimitExceeded(format!(
            "{total} bytes of text (max {})",
            limits.max_text_bytes
        )));
    }
    if extracted.blocks.iter().all(|b| b.text.trim().is_empty()) {
        return Err(ExtractError::NoText(match format {
            Format::Pdf => "the PDF has no text layer (scanned or image-only?)".into(),
            _ => "the document contains no text".into(),
        }));
    }
    Ok(Extracted {
        format,
        ..extracted
    })
}

/// Collapses runs of whitespace to one space and trims.
pub(crate) fn normalize_ws(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_is_by_content() {
        assert_eq!(detect(b"%PDF-1.7 ...", "x.txt").unwrap(), Format::Pdf);
        assert_eq!(
            detect(b"hello world", "notes.md").unwrap(),
            Format::Markdown
        );
        assert_eq!(detect(b"a,b\n1,2\n", "t.csv").unwrap(), Format::Csv);
        assert_eq!(
            detect(b"<!DOCTYPE html><html><body>x</body></html>", "page").unwrap(),
            Format::Html
        );
        assert_eq!(detect(b"plain", "x.pdf").unwrap(), Format::Text);
        assert!(matches!(detect(b"", "x.txt"), Err(ExtractError::Empty)));
        let random: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert!(matches!(
            detect(&random, "x.bin"),
            Err(ExtractError::Unsupported(_))
        ));
    }

    fn ole2(streams: &[&str]) -> Vec<u8> {
        use std::io::Write;
        let mut cf = cfb::CompoundFile::create(std::io::Cursor::new(Vec::new())).unwrap();
        for s in streams {
            cf.create_stream(s).unwrap().write_all(b"bytes").unwrap();
        }
        cf.flush().unwrap();
        cf.into_inner().into_inner()
    }

    #[test]
    fn legacy_office_files_are_told_apart() {
        let doc = extract(
            &ole2(&["/WordDocument", "/1Table"]),
            "a.doc",
            &Limits::default(),
        );
        let e = doc.unwrap_err();
        assert_eq!(e.code(), "unsupported_format");
        assert!(e.to_string().contains(".doc"), "{e}");
        let ppt = detect(&ole2(&["/PowerPoint Document"]), "a.ppt").unwrap_err();
        assert!(ppt.to_string().contains(".ppt"), "{ppt}");
        assert_eq!(detect(&ole2(&["/Workbook"]), "x").unwrap(), Format::Xls);
        let enc = detect(&ole2(&["/EncryptionInfo", "/EncryptedPackage"]), "a.docx");
        assert_eq!(enc.unwrap_err().code(), "encrypted_document");
        let other = detect(&ole2(&["/__substg1.0_0037001F"]), "mail.msg").unwrap_err();
        assert_eq!(other.code(), "unsupported_format");
        // A truncated directory is refused, never a panic.
        let mut cut = ole2(&["/Workbook"]);
        cut.truncate(600);
        assert!(detect(&cut, "x.xls").is_err());
    }

    #[test]
    fn text_comes_out_in_normal_form_c() {
        let decomposed = "Informac\u{0327}a\u{0303}o # Sec\u{0327}a\u{0303}o";
        let b = extract(decomposed.as_bytes(), "a.txt", &Limits::default()).unwrap();
        assert_eq!(b.blocks[0].text, "Informação # Seção");
        let md = "# Configurac\u{0327}a\u{0303}o\n\nTexto.";
        let b = extract(md.as_bytes(), "a.md", &Limits::default()).unwrap();
        assert_eq!(
            b.blocks.last().unwrap().location.heading_path,
            ["Configuração"]
        );
    }

    #[test]
    fn empty_and_whitespace_documents_fail_clearly() {
        let e = extract(b"", "a.txt", &Limits::default()).unwrap_err();
        assert_eq!(e.code(), "empty_document");
        let e = extract(b"   \n\n  ", "a.txt", &Limits::default()).unwrap_err();
        assert_eq!(e.code(), "no_text");
    }
}
