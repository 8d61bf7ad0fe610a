//! DOCX: `word/document.xml` read with quick-xml. Paragraphs, headings (from the paragraph style),
//! list items (numbering properties) and table rows (cells joined with " | ").

use quick_xml::events::Event;
use quick_xml::Reader;
use rag_api::SourceLocation;

use super::{normalize_ws, zipguard, Block, BlockKind, ExtractError, Extracted, Format, Limits};

pub(crate) fn extract(bytes: &[u8], limits: &Limits) -> Result<Extracted, ExtractError> {
    let mut zip = zipguard::open(bytes, Format::Docx)?;
    zipguard::check_limits(&mut zip, limits)?;
    let xml = zipguard::read_member(
        &mut zip,
        "word/document.xml",
        limits.max_uncompressed_bytes,
        Format::Docx,
    )?;
    let blocks = parse_document(&xml, limits)?;
    Ok(Extracted {
        format: Format::Docx,
        pages: 1,
        blocks,
    })
}

fn heading_level(style: &str) -> Option<u8> {
    let s = style.to_ascii_lowercase();
    if s == "title" {
        return Some(1);
    }
    let n = s.strip_prefix("heading")?.trim_start_matches(' ');
    n.parse::<u8>().ok().filter(|l| (1..=9).contains(l))
}

pub(crate) fn parse_document(xml: &[u8], limits: &Limits) -> Result<Vec<Block>, ExtractError> {
    let mut reader = Reader::from_reader(xml);
    reader.config_mut().trim_text(false);
    let mut buf = Vec::new();
    let mut depth = 0usize;
    let mut blocks = Vec::new();
    let mut path: Vec<(u8, String)> = Vec::new();

    // Paragraph state
    let mut para = String::new();
    let mut style_level: Option<u8> = None;
    let mut is_list = false;
    let mut in_text = false;
    // Table state: cells of the current row, and nesting of tables.
    let mut table_depth = 0usize;
    let mut row_cells: Vec<String> = Vec::new();
    let mut cell = String::new();

    let err = |e: quick_xml::Error| ExtractError::malformed(Format::Docx, e);
    loop {
        let ev = reader.read_event_into(&mut buf).map_err(err)?;
        match ev {
            Event::Start(ref e) => {
                depth += 1;
                if depth > limits.max_xml_depth {
                    return Err(ExtractError::LimitExceeded(format!(
                        "XML nested deeper than {}",
                        limits.max_xml_depth
                    )));
                }
                match e.local_name().as_ref() {
                    b"p" => {
                        para.clear();
                        style_level = None;
                        is_list = false;
                    }
                    b"t" => in_text = true,
                    b"tbl" => table_depth += 1,
                    b"tr" => row_cells.clear(),
                    b"tc" => cell.clear(),
                    b"numPr" => is_list = true,
                    _ => {}
                }
            }
            Event::Empty(ref e) => match e.local_name().as_ref() {
                b"pStyle" => {
                    for a in e.attributes().flatten() {
                        if a.key.local_name().as_ref() == b"val" {
                            style_level = heading_level(&String::from_utf8_lossy(&a.value));
                        }
                    }
                }
                b"numPr" => is_list = true,
                b"tab" => para.push('\t'),
                b"br" | b"cr" => para.push('\n'),
                _ => {}
            },
            Event::Text(ref t) if in_text => {
                let s = t
                    .decode()
                    .map_err(|e| ExtractError::malformed(Format::Docx, e))?;
                para.push_str(&s);
            }
            Event::GeneralRef(ref r) if in_text => {
                // Character and predefined entity references inside w:t.
                let name = String::from_utf8_lossy(r.as_ref()).into_owned();
                let ch = match name.as_str() {
                    "amp" => Some('&'),
                    "lt" => Some('<'),
                    "gt" => Some('>'),
                    "quot" => Some('"'),
                    "apos" => Some('\''),
                    n => n
                        .strip_prefix("#x")
                        .and_then(|h| u32::from_str_radix(h, 16).ok())
                        .or_else(|| n.strip_prefix('#').and_then(|d| d.parse().ok()))
                        .and_then(char::from_u32),
                };
                if let Some(c) = ch {
                    para.push(c);
                }
            }
            Event::End(ref e) => {
                depth = depth.saturating_sub(1);
                match e.local_name().as_ref() {
                    b"t" => in_text = false,
                    b"p" => {
                        let text = normalize_ws(&para);
                        if table_depth > 0 {
                            if !text.is_empty() {
                                if !cell.is_empty() {
                                    cell.push(' ');
                                }
                                cell.push_str(&text);
                            }
                        } else if !text.is_empty() {
                            let kind = match style_level {
                                Some(level) => {
                                    while path.last().is_some_and(|(l, _)| *l >= level) {
                                        path.pop();
                                    }
                                    path.push((level, text.clone()));
                                    BlockKind::Heading(level)
                                }
                                None if is_list => BlockKind::ListItem,
                                None => BlockKind::Paragraph,
                            };
                            let text = if kind == BlockKind::ListItem {
                                format!("- {text}")
                            } else {
                                text
                            };
                            blocks.push(Block {
                                text,
                                kind,
                                location: SourceLocation {
                                    heading_path: path.iter().map(|(_, t)| t.clone()).collect(),
                                    ..Default::default()
                                },
                            });
                        }
                        para.clear();
                    }
                    b"tc" => row_cells.push(std::mem::take(&mut cell)),
                    b"tr" if table_depth == 1 => {
                        let cells: Vec<&str> = row_cells
                            .iter()
                            .map(|c| c.as_str())
                            .filter(|c| !c.is_empty())
                            .collect();
                        if !cells.is_empty() {
                            blocks.push(Block {
                                text: cells.join(" | "),
                                kind: BlockKind::TableRow,
                                location: SourceLocation {
                                    heading_path: path.iter().map(|(_, t)| t.clone()).collect(),
                                    ..Default::default()
                                },
                            });
                        }
                        row_cells.clear();
                    }
                    b"tbl" => table_depth = table_depth.saturating_sub(1),
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: &str = r#"xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main""#;

    #[test]
    fn paragraphs_headings_lists_tables() {
        let xml = format!(
            r#"<w:document {W}><w:body>
<w:p><w:pPr><w:pStyle w:val="Heading1"/></w:pPr><w:r><w:t>Intro</w:t></w:r></w:p>
<w:p><w:r><w:t xml:space="preserve">Hello </w:t></w:r><w:r><w:t>world &amp; all</w:t></w:r></w:p>
<w:p><w:pPr><w:numPr><w:ilvl w:val="0"/></w:numPr></w:pPr><w:r><w:t>first item</w:t></w:r></w:p>
<w:tbl><w:tr><w:tc><w:p><w:r><w:t>Name</w:t></w:r></w:p></w:tc><w:tc><w:p><w:r><w:t>Age</w:t></w:r></w:p></w:tc></w:tr></w:tbl>
</w:body></w:document>"#
        );
        let b = parse_document(xml.as_bytes(), &Limits::default()).unwrap();
        let texts: Vec<&str> = b.iter().map(|b| b.text.as_str()).collect();
        assert_eq!(
            texts,
            vec!["Intro", "Hello world & all", "- first item", "Name | Age"]
        );
        assert_eq!(b[0].kind, BlockKind::Heading(1));
        assert_eq!(b[1].location.heading_path, vec!["Intro"]);
        assert_eq!(b[3].kind, BlockKind::TableRow);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let xml = format!(
            "<w:document {W}>{}{}</w:document>",
            "<a>".repeat(10_000),
            "</a>".repeat(10_000)
        );
        let e = parse_document(xml.as_bytes(), &Limits::default()).unwrap_err();
        assert_eq!(e.code(), "limit_exceeded");
    }
}
