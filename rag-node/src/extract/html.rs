//! HTML → visible text. A small tag scanner rather than a DOM: we only need the text a browser
//! would show, split at block elements, with `h1`–`h6` as headings. Script, style and other
//! invisible elements are skipped.

use rag_api::SourceLocation;

use super::{normalize_ws, text, Block, BlockKind, ExtractError, Extracted, Format, Limits};

const INVISIBLE: &[&str] = &[
    "script", "style", "noscript", "template", "svg", "head", "iframe", "object",
];
const BLOCK: &[&str] = &[
    "p",
    "div",
    "br",
    "li",
    "tr",
    "section",
    "article",
    "table",
    "ul",
    "ol",
    "blockquote",
    "pre",
    "header",
    "footer",
    "nav",
    "aside",
    "main",
    "form",
    "dl",
    "dt",
    "dd",
    "figure",
    "figcaption",
    "hr",
    "address",
    "details",
    "summary",
    "caption",
    "body",
    "html",
];

pub(crate) fn extract(bytes: &[u8], _limits: &Limits) -> Result<Extracted, ExtractError> {
    let src = text::decode(bytes)
        .ok_or_else(|| ExtractError::malformed(Format::Html, "not valid text"))?;
    Ok(Extracted {
        format: Format::Html,
        pages: 1,
        blocks: blocks(&src),
    })
}

struct Builder {
    blocks: Vec<Block>,
    cur: String,
    heading: Option<u8>,
    path: Vec<(u8, String)>,
    in_li: bool,
}

impl Builder {
    fn flush(&mut self) {
        let t = normalize_ws(&self.cur);
        self.cur.clear();
        if t.is_empty() {
            return;
        }
        let kind = match self.heading {
            Some(level) => {
                while self.path.last().is_some_and(|(l, _)| *l >= level) {
                    self.path.pop();
                }
                self.path.push((level, t.clone()));
                BlockKind::Heading(level)
            }
            None if self.in_li => BlockKind::ListItem,
            None => BlockKind::Paragraph,
        };
        self.blocks.push(Block {
            text: t,
            kind,
            location: SourceLocation {
                heading_path: self.path.iter().map(|(_, t)| t.clone()).collect(),
                ..Default::default()
            },
        });
    }
}

fn blocks(src: &str) -> Vec<Block> {
    let mut b = Builder {
        blocks: Vec::new(),
        cur: String::new(),
        heading: None,
        path: Vec::new(),
        in_li: false,
    };
    let mut skip_until: Option<String> = None;
    let mut rest = src;
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            if skip_until.is_none() {
                b.cur.push_str(&decode_entities(rest));
            }
            break;
        };
        if skip_until.is_none() {
            b.cur.push_str(&decode_entities(&rest[..lt]));
        }
        rest = &rest[lt..];
        if let Some(after) = rest.strip_prefix("<!--") {
            rest = after.find("-->").map(|i| &after[i + 3..]).unwrap_or("");
            continue;
        }
        let Some(gt) = find_tag_end(rest) else {
            // A stray '<' that never closes: treat as text.
            if skip_until.is_none() {
                b.cur.push('<');
            }
            rest = &rest[1..];
            continue;
        };
        let tag = &rest[1..gt];
        rest = &rest[gt + 1..];
        let closing = tag.starts_with('/');
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        if name.is_empty() {
            continue; // <!DOCTYPE>, <?xml?>, malformed
        }
        if let Some(until) = &skip_until {
            if closing && &name == until {
                skip_until = None;
            }
            continue;
        }
        if !closing && INVISIBLE.contains(&name.as_str()) && !tag.ends_with('/') {
            skip_until = Some(name);
            continue;
        }
        let heading_level = match name.as_str() {
            "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => Some(name.as_bytes()[1] - b'0'),
            _ => None,
        };
        if let Some(level) = heading_level {
            b.flush();
            b.heading = if closing { None } else { Some(level) };
        } else if name == "td" || name == "th" {
            if !closing && !b.cur.trim().is_empty() {
                b.cur.push_str(" | ");
            }
        } else if BLOCK.contains(&name.as_str()) {
            b.flush();
            if name == "li" {
                b.in_li = !closing;
            }
        }
    }
    b.flush();
    b.blocks
}

/// Index of the `>` that ends the tag starting at `s[0] == '<'`, honouring quoted attributes.
fn find_tag_end(s: &str) -> Option<usize> {
    let mut quote: Option<u8> = None;
    for (i, &c) in s.as_bytes().iter().enumerate().skip(1) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, b'"') | (None, b'\'') => quote = Some(c),
            (None, b'>') => return Some(i),
            (None, b'<') if i == 1 => return None,
            _ => {}
        }
    }
    None
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let end = rest[1..]
            .find(|c: char| c == ';' || c.is_whitespace() || c == '&')
            .map(|i| i + 1);
        let decoded = end
            .filter(|&e| rest.as_bytes().get(e) == Some(&b';'))
            .and_then(|e| {
                let ent = &rest[1..e];
                let ch = if let Some(num) = ent.strip_prefix('#') {
                    let v = match num.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok(),
                        None => num.parse().ok(),
                    };
                    v.and_then(char::from_u32)
                } else {
                    named_entity(ent)
                };
                ch.map(|c| (c, e + 1))
            });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn named_entity(name: &str) -> Option<char> {
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => ' ',
        "mdash" => '—',
        "ndash" => '–',
        "hellip" => '…',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        "lsquo" => '‘',
        "rsquo" => '’',
        "ldquo" => '“',
        "rdquo" => '”',
        "euro" => '€',
        "eacute" => 'é',
        "egrave" => 'è',
        "uuml" => 'ü',
        "ouml" => 'ö',
        "auml" => 'ä',
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_text_only_with_headings() {
        let html = r#"<!DOCTYPE html><html><head><title>T</title><style>p{color:red}</style></head>
<body><h1>Main &amp; Title</h1><p>First <b>para</b>graph.</p><script>var x = "<p>hidden</p>";</script>
<!-- a comment --><h2>Sub</h2><ul><li>one</li><li>two</li></ul>
<table><tr><td>a</td><td>b</td></tr></table><p>caf&eacute; &#8364;5 &#x41;</p></body></html>"#;
        let b = blocks(html);
        let texts: Vec<&str> = b.iter().map(|b| b.text.as_str()).collect();
        assert_eq!(
            texts,
            vec![
                "Main & Title",
                "First paragraph.",
                "Sub",
                "one",
                "two",
                "a | b",
                "café €5 A"
            ]
        );
        assert_eq!(b[0].kind, BlockKind::Heading(1));
        assert_eq!(b[3].kind, BlockKind::ListItem);
        assert_eq!(b[3].location.heading_path, vec!["Main & Title", "Sub"]);
    }

    #[test]
    fn broken_markup_does_not_panic() {
        for s in [
            "<",
            "<<<>>>",
            "<p",
            "<script>never closed",
            "&#xFFFFFFFF; &bogus; &",
            "<a href='>'>x</a>",
        ] {
            let _ = blocks(s);
        }
        assert_eq!(blocks("<a href='x>y'>link</a>")[0].text, "link");
    }
}
