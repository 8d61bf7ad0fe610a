//! DOCX: `word/document.xml` read with quick-xml. Paragraphs, headings (from the paragraph's
//! outline level, its own or its style's, read from `word/styles.xml`), list items (numbering
//! properties) and table rows (cells joined with " | ").
//!
//! Heading styles are known by their outline level, not their id: a Portuguese Word writes
//! style ids like `Ttulo1` ("Título 1"), LibreOffice `Heading1`, custom styles anything.

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
    // A document without styles (some generators omit the part) still has its text.
    let styles = match zip.index_for_name("word/styles.xml").is_some() {
        true => {
            let xml = zipguard::read_member(
                &mut zip,
                "word/styles.xml",
                limits.max_uncompressed_bytes,
                Format::Docx,
            )?;
            parse_styles(&xml, limits)?
        }
        false => Styles::default(),
    };
    let blocks = parse_document(&xml, &styles, limits)?;
    Ok(Extracted {
        format: Format::Docx,
        pages: 1,
        blocks,
    })
}

/// The heading level of a style id or name when nothing better is known: `Heading1`,
/// `heading 1`, `Title`, and the Portuguese `Título 1` / `Ttulo1`.
fn heading_level(style: &str) -> Option<u8> {
    let s = style.to_lowercase();
    if s == "title" || s == "título" || s == "titulo" {
        return Some(1);
    }
    let n = ["heading", "título", "titulo", "ttulo"]
        .iter()
        .find_map(|p| s.strip_prefix(p))?
        .trim_start_matches(' ');
    n.parse::<u8>().ok().filter(|l| (1..=9).contains(l))
}

/// Paragraph styles by id: the heading level each gives (from `w:outlineLvl`, else its name,
/// else the style it is based on).
#[derive(Default)]
pub(crate) struct Styles {
    levels: std::collections::HashMap<String, u8>,
}

impl Styles {
    fn level(&self, style_id: &str) -> Option<u8> {
        self.levels
            .get(style_id)
            .copied()
            .or_else(|| heading_level(style_id))
    }
}

/// `w:outlineLvl` is 0-based; 9 means body text.
fn outline_level(val: &[u8]) -> Option<u8> {
    let n: u8 = std::str::from_utf8(val).ok()?.parse().ok()?;
    (n < 9).then_some(n + 1)
}

fn attr(e: &quick_xml::events::BytesStart, name: &[u8]) -> Option<Vec<u8>> {
    e.attributes()
        .flatten()
        .find(|a| a.key.local_name().as_ref() == name)
        .map(|a| a.value.into_owned())
}

pub(crate) fn parse_styles(xml: &[u8], limits: &Limits) -> Result<Styles, ExtractError> {
    struct Style {
        outline: Option<u8>,
        name: Option<String>,
        based_on: Option<String>,
    }
    let mut reader = Reader::from_reader(xml);
    let mut buf = Vec::new();
    let mut depth = 0usize;
    let mut styles: std::collections::HashMap<String, Style> = Default::default();
    let mut current: Option<(String, Style)> = None;
    let err = |e: quick_xml::Error| ExtractError::malformed(Format::Docx, e);
    loop {
        let ev = reader.read_event_into(&mut buf).map_err(err)?;
        let (e, empty) = match &ev {
            Event::Start(e) => (Some(e), false),
            Event::Empty(e) => (Some(e), true),
            Event::End(e) => {
                depth = depth.saturating_sub(1);
                if e.local_name().as_ref() == b"style" {
                    if let Some((id, style)) = current.take() {
                        styles.insert(id, style);
                    }
                }
                (None, false)
            }
            Event::Eof => break,
            _ => (None, false),
        };
        if let Some(e) = e {
            if !empty {
                depth += 1;
                if depth > limits.max_xml_depth {
                    return Err(ExtractError::LimitExceeded(format!(
                        "XML nested deeper than {}",
                        limits.max_xml_depth
                    )));
                }
            }
            let val = || attr(e, b"val").map(|v| String::from_utf8_lossy(&v).into_owned());
            match e.local_name().as_ref() {
                b"style" if attr(e, b"type").as_deref() == Some(b"paragraph") => {
                    if let Some(id) = attr(e, b"styleId") {
                        let style = Style {
                            outline: None,
                            name: None,
                            based_on: None,
                        };
                        current = Some((String::from_utf8_lossy(&id).into_owned(), style));
                    }
                }
                b"name" => {
                    if let Some((_, s)) = &mut current {
                        s.name = val();
                    }
                }
                b"basedOn" => {
                    if let Some((_, s)) = &mut current {
                        s.based_on = val();
                    }
                }
                b"outlineLvl" => {
                    if let Some((_, s)) = &mut current {
                        s.outline = attr(e, b"val").and_then(|v| outline_level(&v));
                    }
                }
                _ => {}
            }
        }
        buf.clear();
    }
    // Resolve each style: its own outline level, its name, then its base (cycles cut off).
    let mut levels = std::collections::HashMap::new();
    for id in styles.keys() {
        let mut at = Some(id.as_str());
        for _ in 0..16 {
            let Some(style) = at.and_then(|a| styles.get(a)) else {
                break;
            };
            let found = style
                .outline
                .or_else(|| style.name.as_deref().and_then(heading_level));
            if let Some(level) = found {
                levels.insert(id.clone(), level);
                break;
            }
            at = style.based_on.as_deref();
        }
    }
    Ok(Styles { levels })
}

pub(crate) fn parse_document(
    xml: &[u8],
    styles: &Styles,
    limits: &Limits,
) -> Result<Vec<Block>, ExtractError> {
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
                    if let Some(v) = attr(e, b"val") {
                        style_level = styles.level(&String::from_utf8_lossy(&v));
                    }
                }
                // The paragraph's own outline level wins over its style's.
                b"outlineLvl" => {
                    if let Some(v) = attr(e, b"val") {
                        style_level = outline_level(&v);
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
        let b = parse_document(xml.as_bytes(), &Styles::default(), &Limits::default()).unwrap();
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
        let e = parse_document(xml.as_bytes(), &Styles::default(), &Limits::default()).unwrap_err();
        assert_eq!(e.code(), "limit_exceeded");
    }

    #[test]
    fn headings_are_known_by_outline_level_whatever_the_style_is_called() {
        // As a Portuguese Word writes them: localized ids, built-in names; a custom style
        // based on a heading; one with its own outline level; body text (level 9) is none.
        let styles = format!(
            r#"<w:styles {W}>
<w:style w:type="paragraph" w:styleId="Normal"><w:name w:val="Normal"/></w:style>
<w:style w:type="paragraph" w:styleId="Ttulo1"><w:name w:val="heading 1"/><w:basedOn w:val="Normal"/><w:pPr><w:outlineLvl w:val="0"/></w:pPr></w:style>
<w:style w:type="paragraph" w:styleId="Ttulo2"><w:name w:val="heading 2"/><w:basedOn w:val="Normal"/></w:style>
<w:style w:type="paragraph" w:styleId="CapituloCliente"><w:name w:val="Capítulo do cliente"/><w:basedOn w:val="Ttulo1"/></w:style>
<w:style w:type="paragraph" w:styleId="Destaque"><w:name w:val="Destaque"/><w:pPr><w:outlineLvl w:val="2"/></w:pPr></w:style>
<w:style w:type="paragraph" w:styleId="Corpo"><w:name w:val="Corpo"/><w:pPr><w:outlineLvl w:val="9"/></w:pPr></w:style>
<w:style w:type="character" w:styleId="Ttulo1Char"><w:name w:val="Título 1 Char"/></w:style>
</w:styles>"#
        );
        let styles = parse_styles(styles.as_bytes(), &Limits::default()).unwrap();
        let p = |style: &str, text: &str| {
            format!(
                r#"<w:p><w:pPr><w:pStyle w:val="{style}"/></w:pPr><w:r><w:t>{text}</w:t></w:r></w:p>"#
            )
        };
        let xml = format!(
            "<w:document {W}><w:body>{}{}{}{}{}{}</w:body></w:document>",
            p("CapituloCliente", "Instalação"),
            p("Ttulo2", "Requisitos"),
            p("Destaque", "Memória"),
            p("Corpo", "Texto do corpo."),
            p("Ttulo1", "Configuração"),
            r#"<w:p><w:pPr><w:outlineLvl w:val="1"/></w:pPr><w:r><w:t>Rede</w:t></w:r></w:p>"#,
        );
        let b = parse_document(xml.as_bytes(), &styles, &Limits::default()).unwrap();
        let kinds: Vec<(BlockKind, &str)> = b.iter().map(|b| (b.kind, b.text.as_str())).collect();
        assert_eq!(
            kinds,
            [
                (BlockKind::Heading(1), "Instalação"),
                (BlockKind::Heading(2), "Requisitos"),
                (BlockKind::Heading(3), "Memória"),
                (BlockKind::Paragraph, "Texto do corpo."),
                (BlockKind::Heading(1), "Configuração"),
                (BlockKind::Heading(2), "Rede"),
            ]
        );
        assert_eq!(
            b[3].location.heading_path,
            ["Instalação", "Requisitos", "Memória"]
        );
    }
}
