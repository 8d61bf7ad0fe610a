//! PDF with lopdf: text per page (lopdf decodes compressed streams and ToUnicode maps), located by
//! page number. Encrypted documents we cannot open and image-only documents fail clearly.

use rag_api::SourceLocation;

use super::{normalize_ws, Block, BlockKind, ExtractError, Extracted, Format, Limits};

pub(crate) fn extract(bytes: &[u8], limits: &Limits) -> Result<Extracted, ExtractError> {
    let doc = lopdf::Document::load_mem(bytes).map_err(|e| match e {
        lopdf::Error::Decryption(_) => ExtractError::Encrypted,
        e => ExtractError::malformed(Format::Pdf, e),
    })?;
    let pages = doc.get_pages();
    if pages.len() as u64 > limits.max_pages as u64 {
        return Err(ExtractError::LimitExceeded(format!(
            "{} pages (max {})",
            pages.len(),
            limits.max_pages
        )));
    }
    let mut blocks = Vec::new();
    let mut failed_pages = 0;
    for &number in pages.keys() {
        let text = match doc.extract_text(&[number]) {
            Ok(t) => t,
            Err(_) => {
                failed_pages += 1;
                continue;
            }
        };
        for para in split_paragraphs(&text) {
            blocks.push(Block {
                text: para,
                kind: BlockKind::Paragraph,
                location: SourceLocation {
                    page: Some(number),
                    ..Default::default()
                },
            });
        }
    }
    if blocks.is_empty() && doc.is_encrypted() {
        return Err(ExtractError::Encrypted);
    }
    if blocks.is_empty() && failed_pages > 0 {
        return Err(ExtractError::malformed(
            Format::Pdf,
            format!("text of {failed_pages} page(s) could not be decoded"),
        ));
    }
    Ok(Extracted {
        format: Format::Pdf,
        pages: pages.len() as u32,
        blocks,
    })
}

/// lopdf yields one line per text-showing operation; blank lines separate paragraphs. Lines are
/// joined into paragraphs so chunk boundaries fall between paragraphs, not mid-sentence.
fn split_paragraphs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.trim().is_empty() {
                out.push(normalize_ws(&cur));
            }
            cur.clear();
        } else {
            cur.push_str(line);
            cur.push(' ');
        }
    }
    if !cur.trim().is_empty() {
        out.push(normalize_ws(&cur));
    }
    out
}
