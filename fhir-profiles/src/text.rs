//! The words of a resource for the text search parameters `_text` (the narrative) and
//! `_content` (the entire content), search.html#text.
//!
//! A word is a run of letters and digits in the form [`normalize_string`] gives (lower
//! case, accents removed), cut to [`MAX_WORD_CHARS`] characters. A resource yields each
//! distinct word once, flagged when it occurs in the narrative, and at most [`MAX_WORDS`]
//! words (narrative words first, then the rest in document order).
//!
//! - **Narrative** (`_text`): the text of `text.div` with its tags and attributes left out
//!   and character references decoded.
//! - **Content** (`_content`): the narrative and every `string` and `markdown` value of the
//!   resource, extensions and contained resources included, except the machine-made ones:
//!   element and resource ids, `Extension.url`, `Reference.reference` (all typed `string`
//!   in the R4 definitions), and values that are UUIDs or URNs. Codes, URIs, identifiers of type `id`, dates and numbers are
//!   not words: they are searched through the token, uri, date and number parameters.
//!   (The choice of `string` and `markdown` is what HAPI FHIR's `_content` indexes too.)

use std::collections::HashSet;

use crate::Json;
use crate::fhirpath::{Node, values};
use crate::search::normalize_string;

/// Words longer than this are cut (and search terms likewise, so they still match).
pub const MAX_WORD_CHARS: usize = 40;

/// The most words indexed for one resource.
pub const MAX_WORDS: usize = 1000;

/// A distinct word of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub word: String,
    /// Whether the word occurs in the narrative (`text.div`); every word is content.
    pub narrative: bool,
}

/// The distinct words of `resource` for `_text` and `_content`. Never fails; a value
/// that is not a resource yields nothing.
pub fn resource_words(resource: &Json) -> Vec<Word> {
    let root = Node::resource(resource);
    if root.type_name().is_none() {
        return Vec::new();
    }
    let mut words = Words::default();
    if let Some(div) = resource
        .as_object()
        .and_then(|o| values(o, "text").next())
        .and_then(Json::as_object)
        .and_then(|text| values(text, "div").next())
        .and_then(Json::as_str)
    {
        words.add(&narrative_text(div), true);
    }
    collect(root, true, &mut words);
    words.list
}

/// The words of a search term, in the form they are indexed.
pub fn term_words(text: &str) -> Vec<String> {
    normalize_string(text)
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(|w| cut(w).to_owned())
        .collect()
}

#[derive(Default)]
struct Words {
    seen: HashSet<String>,
    list: Vec<Word>,
}

impl Words {
    fn add(&mut self, text: &str, narrative: bool) {
        if self.list.len() >= MAX_WORDS {
            return;
        }
        let normalized = normalize_string(text);
        for word in normalized.split(' ').filter(|w| !w.is_empty()) {
            let word = cut(word);
            if self.seen.contains(word) {
                continue;
            }
            if self.list.len() >= MAX_WORDS {
                return;
            }
            self.seen.insert(word.to_owned());
            self.list.push(Word {
                word: word.to_owned(),
                narrative,
            });
        }
    }
}

fn cut(word: &str) -> &str {
    match word.char_indices().nth(MAX_WORD_CHARS) {
        Some((end, _)) => &word[..end],
        None => word,
    }
}

/// Adds the content words under `node`; `root` skips the resource's own narrative,
/// which [`resource_words`] has added already.
fn collect(node: Node<'_>, root: bool, words: &mut Words) {
    node.for_each_child(|name, child| {
        if root && name == "text" {
            return;
        }
        match (child.type_name(), child.value()) {
            (Some("string"), Json::String(text))
                if !matches!(name, "id" | "url" | "reference") && !is_machine_identifier(text) =>
            {
                words.add(text, false)
            }
            (Some("string"), _) => {}
            (Some("markdown"), Json::String(text)) => words.add(text, false),
            (Some("xhtml"), Json::String(text)) => words.add(&narrative_text(text), false),
            (_, Json::Object(_)) => collect(child, false, words),
            _ => {}
        }
    });
}

/// UUIDs and URNs (`urn:oid:1.2.3`, `urn:uuid:...`), which identifier values often are: no
/// one looks for their pieces as words, and each would add several rows.
fn is_machine_identifier(text: &str) -> bool {
    let bytes = text.as_bytes();
    let uuid = bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    uuid || text.starts_with("urn:")
}

/// The text of an XHTML fragment: tags, comments and attributes left out (each tag
/// separates words), character references decoded.
pub fn narrative_text(xhtml: &str) -> String {
    let mut text = String::with_capacity(xhtml.len() / 2);
    let mut rest = xhtml;
    while let Some(position) = rest.find(['<', '&']) {
        text.push_str(&rest[..position]);
        rest = &rest[position..];
        if let Some(comment) = rest.strip_prefix("<!--") {
            rest = comment.find("-->").map_or("", |end| &comment[end + 3..]);
            text.push(' ');
        } else if rest.starts_with('<') {
            rest = after_tag(rest);
            text.push(' ');
        } else {
            let (decoded, after) = character_reference(rest);
            text.push(decoded);
            rest = after;
        }
    }
    text.push_str(rest);
    text
}

/// What follows the tag `rest` starts with (`>` inside quoted attribute values skipped).
fn after_tag(rest: &str) -> &str {
    let mut quote = None;
    for (index, c) in rest.char_indices().skip(1) {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(open), _) if c == open => quote = None,
            (None, '>') => return &rest[index + 1..],
            _ => {}
        }
    }
    ""
}

/// Decodes the character reference `rest` starts with (`&amp;`, `&#233;`, `&#xE9;`); an
/// unknown or malformed one becomes a space.
fn character_reference(rest: &str) -> (char, &str) {
    let body_end = rest
        .char_indices()
        .take(12)
        .find(|(_, c)| *c == ';')
        .map(|(i, _)| i);
    let Some(end) = body_end else {
        return (' ', &rest[1..]);
    };
    let name = &rest[1..end];
    let decoded = match name {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        "nbsp" => Some(' '),
        _ => name
            .strip_prefix("#x")
            .or_else(|| name.strip_prefix("#X"))
            .map(|hex| u32::from_str_radix(hex, 16))
            .or_else(|| name.strip_prefix('#').map(str::parse::<u32>))
            .and_then(Result::ok)
            .and_then(char::from_u32),
    };
    (decoded.unwrap_or(' '), &rest[end + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Json {
        <Json as json_syntax::Parse>::parse_str(text)
            .expect("test JSON parses")
            .0
    }

    fn words_of(resource: &str) -> Vec<(String, bool)> {
        resource_words(&parse(resource))
            .into_iter()
            .map(|w| (w.word, w.narrative))
            .collect()
    }

    #[test]
    fn narrative_text_drops_tags_and_decodes_references() {
        let cases = [
            (
                r#"<div xmlns="http://www.w3.org/1999/xhtml"><p>Bone &amp; liver</p></div>"#,
                "bone liver",
            ),
            (
                r#"<div><a href="x>y" title='a>b'>link</a>text</div>"#,
                "link text",
            ),
            ("<div>caf&#233; na&#xEF;ve&nbsp;x</div>", "cafe naive x"),
            ("<div>a<!-- hidden <b> -->b</div>", "a b"),
            ("<div>&bogus; &unterminated</div>", "unterminated"),
            ("<div>unclosed <b", "unclosed"),
        ];
        for (xhtml, expected) in cases {
            assert_eq!(
                normalize_string(&narrative_text(xhtml)),
                expected,
                "{xhtml}"
            );
        }
    }

    #[test]
    fn narrative_and_string_content_become_distinct_words() {
        let words = words_of(
            r#"{"resourceType": "Condition", "id": "secretid",
                "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Bone metastases, <b>bone</b> pain</div>"},
                "extension": [{"url": "http://example.org/ext", "valueString": "Extension words"}],
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "94222008", "display": "Metastasis to bone"}], "text": "Secondary malignancy"},
                "subject": {"reference": "Patient/p1", "display": "Ann Müller"},
                "identifier": [{"value": "e925b0f3-8006-43f6-aa31-94bd215e55e7"}, {"value": "urn:oid:1.2.3"}],
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                "note": [{"text": "Markdown *note*"}],
                "onsetDateTime": "2020-01-01"}"#,
        );
        let expected: Vec<(String, bool)> = [
            ("bone", true),
            ("metastases", true),
            ("pain", true),
            ("extension", false),
            ("words", false),
            ("metastasis", false),
            ("to", false),
            ("secondary", false),
            ("malignancy", false),
            ("ann", false),
            ("muller", false),
            ("markdown", false),
            ("note", false),
        ]
        .into_iter()
        .map(|(w, n)| (w.to_owned(), n))
        .collect();
        assert_eq!(
            words, expected,
            "no ids, urls, references, UUIDs, URNs, codes, systems or dates"
        );
    }

    #[test]
    fn contained_resources_and_primitive_extensions_are_content() {
        let words = words_of(
            r#"{"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "contained": [{"resourceType": "Patient", "id": "c1", "name": [{"family": "Contained"}],
                               "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">inner</div>"}}],
                "_status": {"extension": [{"url": "http://e", "valueMarkdown": "flagged"}]}}"#,
        );
        let names: Vec<&str> = words.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(names, vec!["x", "contained", "inner", "flagged"]);
        assert!(
            words.iter().all(|(_, narrative)| !narrative),
            "a contained narrative is not the resource's narrative"
        );
    }

    #[test]
    fn words_are_cut_and_capped() {
        let long = "a".repeat(MAX_WORD_CHARS + 10);
        let many: Vec<String> = (0..MAX_WORDS + 50).map(|i| format!("w{i}")).collect();
        let resource = format!(
            r#"{{"resourceType": "Basic", "code": {{"text": "{long} {}"}}}}"#,
            many.join(" ")
        );
        let words = resource_words(&parse(&resource));
        assert_eq!(words.len(), MAX_WORDS);
        assert_eq!(words[0].word.chars().count(), MAX_WORD_CHARS);
        assert_eq!(
            term_words(&long),
            vec!["a".repeat(MAX_WORD_CHARS)],
            "terms cut alike"
        );
        assert_eq!(term_words("Heart-Attack  "), vec!["heart", "attack"]);
        assert!(resource_words(&parse(r#"{"resourceType": "Nope"}"#)).is_empty());
    }
}
