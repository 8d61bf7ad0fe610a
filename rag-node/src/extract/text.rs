//! Plain text, Markdown and CSV.

use rag_api::SourceLocation;

use super::{normalize_ws, Block, BlockKind, ExtractError, Extracted, Format, Limits};

/// Decodes text bytes: UTF-8 (with or without BOM), UTF-16 with BOM, or Windows-1252 as a last
/// resort when the bytes are not UTF-8 but contain no control characters. Windows-1252, not
/// Latin-1: it is what "not UTF-8" text from Windows tools is, and its 0x80–0x9F range holds the
/// curly quotes, dashes and € that Latin-1 would turn into control characters. `None` for
/// binary data.
pub(crate) fn decode(bytes: &[u8]) -> Option<String> {
    let text = match encoding_rs::Encoding::for_bom(bytes) {
        Some((encoding, bom)) => {
            let (text, had_errors) = encoding.decode_without_bom_handling(&bytes[bom..]);
            if had_errors {
                return None;
            }
            text.into_owned()
        }
        None => match std::str::from_utf8(bytes) {
            Ok(s) => s.to_owned(),
            Err(_) => encoding_rs::WINDOWS_1252
                .decode_without_bom_handling(bytes)
                .0
                .into_owned(),
        },
    };
    let suspicious = text
        .chars()
        .take(65_536)
        .filter(|&c| {
            (c.is_control() && !matches!(c, '\n' | '\r' | '\t' | '\x0c')) || c == '\u{FFFD}'
        })
        .count();
    let sample = text.chars().take(65_536).count().max(1);
    if text.contains('\0') || suspicious * 100 > sample {
        return None;
    }
    Some(text)
}

pub(crate) fn looks_like_text(bytes: &[u8]) -> bool {
    let mut end = bytes.len().min(65_536);
    // Don't let a multi-byte character cut at the boundary make valid UTF-8 look binary.
    while end < bytes.len() && end > 0 && (bytes[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    decode(&bytes[..end]).is_some()
}

pub(crate) fn looks_like_html(bytes: &[u8]) -> bool {
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(1024)]).to_ascii_lowercase();
    let head = head.trim_start();
    head.starts_with("<!doctype html") || head.starts_with("<html") || head.contains("<body")
}

pub(crate) fn extract(
    bytes: &[u8],
    format: Format,
    limits: &Limits,
) -> Result<Extracted, ExtractError> {
    let text = decode(bytes).ok_or_else(|| ExtractError::malformed(format, "not valid text"))?;
    let blocks = match format {
        Format::Markdown => markdown_blocks(&text),
        Format::Csv => csv_blocks(&text, limits)?,
        _ => paragraphs(&text, &[]),
    };
    Ok(Extracted {
        format,
        pages: 1,
        blocks,
    })
}

/// Paragraphs separated by blank lines.
fn paragraphs(text: &str, heading_path: &[String]) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut cur = String::new();
    let flush = |cur: &mut String, blocks: &mut Vec<Block>| {
        let t = normalize_ws(cur);
        if !t.is_empty() {
            blocks.push(Block {
                text: t,
                kind: BlockKind::Paragraph,
                location: SourceLocation {
                    heading_path: heading_path.to_vec(),
                    ..Default::default()
                },
            });
        }
        cur.clear();
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut cur, &mut blocks);
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    flush(&mut cur, &mut blocks);
    blocks
}

/// Markdown: ATX headings (`#`…`######`) set the heading path of what follows; list items and
/// paragraphs become blocks; fenced code is kept as one block.
fn markdown_blocks(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut path: Vec<(u8, String)> = Vec::new();
    let mut section = String::new();
    let mut in_fence = false;
    let heading_path =
        |path: &[(u8, String)]| path.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
            section.push_str(line);
            section.push('\n');
            continue;
        }
        let level = trimmed.bytes().take_while(|&b| b == b'#').count();
        if !in_fence && (1..=6).contains(&level) && trimmed[level..].starts_with([' ', '\t']) {
            blocks.extend(md_section(&section, &heading_path(&path)));
            section.clear();
            let title = normalize_ws(trimmed[level..].trim().trim_end_matches('#'));
            while path.last().is_some_and(|(l, _)| *l >= level as u8) {
                path.pop();
            }
            path.push((level as u8, title.clone()));
            blocks.push(Block {
                text: title,
                kind: BlockKind::Heading(level as u8),
                location: SourceLocation {
                    heading_path: heading_path(&path),
                    ..Default::default()
                },
            });
            continue;
        }
        section.push_str(line);
        section.push('\n');
    }
    blocks.extend(md_section(&section, &heading_path(&path)));
    blocks
}

fn md_section(text: &str, heading_path: &[String]) -> Vec<Block> {
    let mut out = paragraphs(text, heading_path);
    for b in &mut out {
        let t = b.text.trim_start();
        if t.starts_with("- ") || t.starts_with("* ") || t.starts_with("+ ") {
            b.kind = BlockKind::ListItem;
        }
    }
    out
}

/// Splits CSV text into records (RFC 4180 quoting).
pub(crate) fn parse_csv(text: &str, max_rows: u64) -> Result<Vec<Vec<String>>, ExtractError> {
    let delim = sniff_delimiter(text);
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    field.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
        } else if c == '"' && field.is_empty() {
            quoted = true;
        } else if c == delim {
            row.push(std::mem::take(&mut field));
        } else if c == '\n' || c == '\r' {
            if c == '\r' && chars.peek() == Some(&'\n') {
                chars.next();
            }
            row.push(std::mem::take(&mut field));
            rows.push(std::mem::take(&mut row));
            if rows.len() as u64 > max_rows {
                return Err(ExtractError::LimitExceeded(format!(
                    "more than {max_rows} rows"
                )));
            }
        } else {
            field.push(c);
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    Ok(rows)
}

fn sniff_delimiter(text: &str) -> char {
    let first = text.lines().next().unwrap_or("");
    [',', ';', '\t', '|']
        .into_iter()
        .max_by_key(|d| first.matches(*d).count())
        .filter(|d| first.contains(*d))
        .unwrap_or(',')
}

/// Renders table rows as "Header: value; Header: value" so each row stands on its own in a
/// chunk (a bare "42" means nothing to the embedder or the reader).
pub(crate) fn render_rows(
    rows: &[Vec<String>],
    sheet: Option<&str>,
    first_row_number: u32,
) -> Vec<Block> {
    let mut blocks = Vec::new();
    let Some(header_idx) = rows
        .iter()
        .position(|r| r.iter().any(|c| !c.trim().is_empty()))
    else {
        return blocks;
    };
    let headers: Vec<String> = rows[header_idx].iter().map(|h| normalize_ws(h)).collect();
    for (i, row) in rows.iter().enumerate().skip(header_idx + 1) {
        let mut parts = Vec::new();
        for (j, cell) in row.iter().enumerate() {
            let v = normalize_ws(cell);
            if v.is_empty() {
                continue;
            }
            match headers.get(j).filter(|h| !h.is_empty()) {
                Some(h) => parts.push(format!("{h}: {v}")),
                None => parts.push(v),
            }
        }
        if parts.is_empty() {
            continue;
        }
        let n = first_row_number + i as u32;
        blocks.push(Block {
            text: parts.join("; "),
            kind: BlockKind::TableRow,
            location: SourceLocation {
                sheet: sheet.map(str::to_owned),
                row_start: Some(n),
                row_end: Some(n),
                ..Default::default()
            },
        });
    }
    blocks
}

fn csv_blocks(text: &str, limits: &Limits) -> Result<Vec<Block>, ExtractError> {
    let rows = parse_csv(text, limits.max_rows)?;
    Ok(render_rows(&rows, None, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_headings_build_a_path() {
        let md = "# Guide\n\nIntro text.\n\n## Install\n\nRun the thing.\n\n- item one\n\n## Use\n\nCall it.\n";
        let b = markdown_blocks(md);
        let install = b.iter().find(|b| b.text == "Run the thing.").unwrap();
        assert_eq!(install.location.heading_path, vec!["Guide", "Install"]);
        let item = b.iter().find(|b| b.text == "- item one").unwrap();
        assert_eq!(item.kind, BlockKind::ListItem);
        let use_ = b.iter().find(|b| b.text == "Call it.").unwrap();
        assert_eq!(use_.location.heading_path, vec!["Guide", "Use"]);
    }

    #[test]
    fn csv_rows_carry_headers_and_row_numbers() {
        let b = csv_blocks(
            "name,city\n\"Smith, J\",Oslo\nDoe,\"Ber\"\"lin\"\n",
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].text, "name: Smith, J; city: Oslo");
        assert_eq!(b[0].location.row_start, Some(2));
        assert_eq!(b[1].text, "name: Doe; city: Ber\"lin");
    }

    #[test]
    fn decodes_utf16_and_rejects_binary() {
        let mut bytes = vec![0xFF, 0xFE];
        for u in "héllo".encode_utf16() {
            bytes.extend_from_slice(&u.to_le_bytes());
        }
        assert_eq!(decode(&bytes).unwrap(), "héllo");
        assert!(decode(&[0, 1, 2, 3, 0, 0, 7, 8]).is_none());
        assert_eq!(decode(b"caf\xe9").unwrap(), "café");
        // Windows-1252's own range: curly quotes, dashes, the euro sign.
        assert_eq!(
            decode(b"\x93Ol\xe1\x94 \x96 \x80 5").unwrap(),
            "\u{201c}Olá\u{201d} \u{2013} € 5"
        );
        // UTF-16 with a BOM, both byte orders; broken UTF-16 is not text.
        assert_eq!(decode(b"\xff\xfeO\x00l\x00\xe1\x00").unwrap(), "Olá");
        assert_eq!(decode(b"\xfe\xff\x00O\x00l\x00\xe1").unwrap(), "Olá");
        assert!(decode(b"\xff\xfe\x00\xd8").is_none());
    }

    #[test]
    fn row_limit_is_enforced() {
        let text = "a\n".repeat(100);
        assert!(matches!(
            parse_csv(&text, 10),
            Err(ExtractError::LimitExceeded(_))
        ));
    }
}
