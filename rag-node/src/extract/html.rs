//! HTML → visible text, read by html5ever's tokenizer (the HTML5 tokenization rules: every
//! named and numeric character reference decoded, broken markup recovered the way browsers
//! do). We keep no DOM: the text a browser would show is cut into blocks at block elements,
//! with `h1`–`h6` as headings. Script, style and other invisible elements are skipped.

use std::cell::RefCell;

use html5ever::tendril::StrTendril;
use html5ever::tokenizer::states::RawKind;
use html5ever::tokenizer::{
    BufferQueue, TagKind, Token, TokenSink, TokenSinkResult, Tokenizer, TokenizerOpts,
};
use rag_api::SourceLocation;

use super::{normalize_ws, text, Block, BlockKind, ExtractError, Extracted, Format, Limits};

const INVISIBLE: &[&str] = &[
    "script", "style", "noscript", "template", "svg", "head", "iframe", "object", "textarea",
    "noembed", "noframes", "xmp", "title",
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
    /// Inside an invisible element: its name and how many of them are open.
    skip: Option<(String, usize)>,
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

    /// A start or end tag; returns the tokenizer state the element's content needs.
    fn tag(&mut self, name: &str, closing: bool, self_closing: bool) -> Option<RawKind> {
        if let Some((skipped, open)) = &mut self.skip {
            if name == skipped.as_str() {
                if closing {
                    *open -= 1;
                } else if !self_closing {
                    *open += 1;
                }
                if *open == 0 {
                    self.skip = None;
                }
            }
            return None;
        }
        if !closing && INVISIBLE.contains(&name) {
            if !self_closing {
                self.skip = Some((name.to_owned(), 1));
            }
            // What the tree builder would ask for, so that `<script>if (a<b)…` stays one text.
            return match name {
                "script" => Some(RawKind::ScriptData),
                "style" | "xmp" | "iframe" | "noembed" | "noframes" | "noscript" => {
                    Some(RawKind::Rawtext)
                }
                "textarea" | "title" => Some(RawKind::Rcdata),
                _ => None,
            };
        }
        let heading_level = match name {
            "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => Some(name.as_bytes()[1] - b'0'),
            _ => None,
        };
        if let Some(level) = heading_level {
            self.flush();
            self.heading = if closing { None } else { Some(level) };
        } else if name == "td" || name == "th" {
            if !closing && !self.cur.trim().is_empty() {
                self.cur.push_str(" | ");
            }
        } else if BLOCK.contains(&name) {
            self.flush();
            if name == "li" {
                self.in_li = !closing;
            }
        }
        None
    }
}

struct Sink(RefCell<Builder>);

impl TokenSink for Sink {
    type Handle = ();

    fn process_token(&self, token: Token, _line: u64) -> TokenSinkResult<()> {
        let mut b = self.0.borrow_mut();
        match token {
            Token::TagToken(tag) => {
                let closing = tag.kind == TagKind::EndTag;
                if let Some(raw) = b.tag(&tag.name, closing, tag.self_closing) {
                    return TokenSinkResult::RawData(raw);
                }
            }
            Token::CharacterTokens(text) if b.skip.is_none() => b.cur.push_str(&text),
            _ => {}
        }
        TokenSinkResult::Continue
    }
}

fn blocks(src: &str) -> Vec<Block> {
    let sink = Sink(RefCell::new(Builder {
        blocks: Vec::new(),
        cur: String::new(),
        heading: None,
        path: Vec::new(),
        in_li: false,
        skip: None,
    }));
    let input = BufferQueue::default();
    input.push_back(StrTendril::from_slice(src));
    let tokenizer = Tokenizer::new(sink, TokenizerOpts::default());
    let _ = tokenizer.feed(&input);
    tokenizer.end();
    let mut b = tokenizer.sink.0.into_inner();
    b.flush();
    b.blocks
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

    #[test]
    fn every_character_reference_decodes() {
        let b = blocks("<p>Informa&ccedil;&atilde;o &#231; &#xE7; &Eacute;poca &nbsp;&euro;&hellip; &notin; R&amp;D</p>");
        assert_eq!(b[0].text, "Informação ç ç Época €… ∉ R&D");
        // Without the semicolon, as browsers read legacy references; unknown ones stay text.
        assert_eq!(
            blocks("<p>a &copy 2024 &bogus; &</p>")[0].text,
            "a © 2024 &bogus; &"
        );
    }

    #[test]
    fn broken_markup_still_yields_the_visible_text() {
        let html = "<html><body><h2>Configura&ccedil;&atilde;o</h2><p>Edite <b>/etc/fstab<i> e reinicie\
                    <div>Erro ERR-4312 <span class=x\"y>ao montar</div><script>if (a<b) { x('</p>') }</script>fim";
        let b = blocks(html);
        let texts: Vec<&str> = b.iter().map(|b| b.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "Configuração",
                "Edite /etc/fstab e reinicie",
                "Erro ERR-4312 ao montar",
                "fim"
            ]
        );
        assert_eq!(b[3].location.heading_path, ["Configuração"]);
    }
}
