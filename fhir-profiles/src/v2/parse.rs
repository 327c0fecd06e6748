//! HL7 v2 message parsing: segments, fields, repetitions, components and subcomponents, with
//! the delimiters a message declares in MSH-1/MSH-2, its escape sequences decoded, and its
//! bytes decoded as the character set of MSH-18 says.
//!
//! Written here rather than taken from a crate: the ones on crates.io (`hl7-parser`,
//! `rust-hl7`) neither decode MSH-18 character sets nor keep `""` (an explicit null) apart
//! from an empty value, and both matter to the mapping.

use super::{ErrorCode, Severity, V2Error};

/// The explicit null of HL7 v2: a field sent as `""` means "delete the value".
pub const NULL: &str = "\"\"";

/// A parsed message: its segments in order.
#[derive(Debug, Clone)]
pub struct Message {
    pub segments: Vec<Segment>,
    /// The character set the bytes were decoded with (MSH-18, first repetition), as declared;
    /// empty when the message declares none.
    pub charset: String,
}

/// One segment. `fields[0]` is MSH-1 for MSH and the first field otherwise, so that
/// [`Segment::field`] numbers fields as the standard does.
#[derive(Debug, Clone)]
pub struct Segment {
    pub id: String,
    fields: Vec<Field>,
}

/// A field: its repetitions (one for a field that does not repeat).
#[derive(Debug, Clone, Default)]
pub struct Field {
    pub repetitions: Vec<Repetition>,
}

/// One repetition of a field: its components.
#[derive(Debug, Clone, Default)]
pub struct Repetition {
    pub components: Vec<Component>,
}

/// One component: its subcomponents, escape sequences decoded.
#[derive(Debug, Clone, Default)]
pub struct Component {
    pub subcomponents: Vec<String>,
}

impl Segment {
    /// Field `n` (1-based, as in `PID-3`), if present.
    pub fn field(&self, n: usize) -> Option<&Field> {
        n.checked_sub(1).and_then(|i| self.fields.get(i))
    }

    /// The text of field `n` (its first repetition, first component, first subcomponent);
    /// empty when absent.
    pub fn text(&self, n: usize) -> &str {
        self.field(n)
            .and_then(|f| f.repetitions.first())
            .map(|r| r.text(1))
            .unwrap_or("")
    }

    /// The number of fields present.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether the segment has no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

impl Repetition {
    /// The text of component `n` (1-based; its first subcomponent), empty when absent.
    pub fn text(&self, n: usize) -> &str {
        n.checked_sub(1)
            .and_then(|i| self.components.get(i))
            .and_then(|c| c.subcomponents.first())
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// The delimiters of a message (MSH-1 and MSH-2).
#[derive(Debug, Clone, Copy)]
struct Delimiters {
    field: char,
    component: char,
    repetition: char,
    escape: Option<char>,
    subcomponent: char,
    /// The truncation character (MSH-2's fifth, v2.7 on; `#` when not declared), which
    /// `\P\` stands for.
    truncation: char,
}

/// The MSH segment alone, its bytes read as UTF-8 with anything else replaced, whatever MSH-18
/// says: enough to acknowledge a message that [`parse`] refuses (an unknown character set,
/// bytes that are not the declared one). `None` without an MSH.
pub fn parse_header(bytes: &[u8]) -> Option<Message> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let end = bytes
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(bytes.len());
    let line = String::from_utf8_lossy(&bytes[..end]);
    let delimiters = delimiters(&line).ok()?;
    let charset = declared_charset(bytes).unwrap_or_default();
    Some(Message {
        segments: vec![parse_segment(&line, &delimiters, true)],
        charset,
    })
}

/// Parses a message. A leading UTF-8 byte-order mark is skipped; segments may end with `\r`,
/// `\n` or `\r\n`.
pub fn parse(bytes: &[u8]) -> Result<Message, V2Error> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let charset = declared_charset(bytes)?;
    let text = decode(bytes, &charset)?;
    let mut lines = text
        .split(['\r', '\n'])
        .map(|l| l.trim_start_matches(['\u{b}', '\u{1c}']))
        .filter(|l| !l.trim().is_empty());
    let header = lines.next().unwrap_or("");
    let delimiters = delimiters(header)?;
    let mut segments = vec![parse_segment(header, &delimiters, true)];
    for line in lines {
        let segment = parse_segment(line, &delimiters, false);
        if segment.id.len() != 3 || !segment.id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(V2Error::rejected(
                ErrorCode::SegmentSequence,
                format!(
                    "segment {} is not a segment (bad segment id)",
                    segments.len() + 1
                ),
                None,
                None,
            ));
        }
        segments.push(segment);
    }
    Ok(Message { segments, charset })
}

fn delimiters(header: &str) -> Result<Delimiters, V2Error> {
    if !header.starts_with("MSH") {
        return Err(V2Error::rejected(
            ErrorCode::SegmentSequence,
            "the message does not start with an MSH segment",
            Some(("MSH", 1)),
            None,
        ));
    }
    let mut chars = header[3..].chars();
    let field = chars.next().ok_or_else(|| {
        V2Error::rejected(
            ErrorCode::RequiredFieldMissing,
            "MSH has no field separator",
            Some(("MSH", 1)),
            None,
        )
    })?;
    let encoding: Vec<char> = chars.take_while(|&c| c != field).collect();
    if encoding.len() < 2 || field.is_alphanumeric() {
        return Err(V2Error::rejected(
            ErrorCode::DataType,
            "MSH-2 must declare at least the component and repetition separators",
            Some(("MSH", 2)),
            None,
        ));
    }
    Ok(Delimiters {
        field,
        component: encoding[0],
        repetition: encoding[1],
        escape: encoding.get(2).copied(),
        subcomponent: encoding.get(3).copied().unwrap_or('&'),
        truncation: encoding.get(4).copied().unwrap_or('#'),
    })
}

fn parse_segment(line: &str, d: &Delimiters, is_header: bool) -> Segment {
    let mut parts = line.split(d.field);
    let id = parts.next().unwrap_or("").to_owned();
    let mut fields = Vec::new();
    if is_header {
        // MSH-1 is the field separator itself, MSH-2 the encoding characters (not split)
        fields.push(literal(&d.field.to_string()));
        fields.push(literal(parts.next().unwrap_or("")));
    }
    fields.extend(parts.map(|raw| parse_field(raw, d)));
    Segment { id, fields }
}

fn literal(text: &str) -> Field {
    Field {
        repetitions: vec![Repetition {
            components: vec![Component {
                subcomponents: vec![text.to_owned()],
            }],
        }],
    }
}

fn parse_field(raw: &str, d: &Delimiters) -> Field {
    if raw.is_empty() {
        return Field::default();
    }
    Field {
        repetitions: raw
            .split(d.repetition)
            .map(|rep| Repetition {
                components: rep
                    .split(d.component)
                    .map(|comp| Component {
                        subcomponents: comp.split(d.subcomponent).map(|s| unescape(s, d)).collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Decodes the escape sequences of a value: `\F\ \S\ \T\ \R\ \E\ \P\` (the delimiters),
/// `\Xhh...\` (bytes, read as UTF-8 or else Latin-1), `\.br\` and `\.sp\` (line breaks);
/// formatting (`\H\`, `\N\`, `\.in\`, ...) and character-set switches (`\C..\`, `\M..\`) are
/// dropped. An unterminated escape is kept as written.
fn unescape(text: &str, d: &Delimiters) -> String {
    let Some(escape) = d.escape else {
        return text.to_owned();
    };
    if !text.contains(escape) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(escape) {
        out.push_str(&rest[..start]);
        let after = &rest[start + escape.len_utf8()..];
        let Some(end) = after.find(escape) else {
            out.push_str(&rest[start..]);
            return out;
        };
        let sequence = &after[..end];
        match sequence {
            "F" => out.push(d.field),
            "S" => out.push(d.component),
            "T" => out.push(d.subcomponent),
            "R" => out.push(d.repetition),
            "E" => out.push(escape),
            "P" => out.push(d.truncation),
            ".br" | ".sp" => out.push('\n'),
            s if s.starts_with('X') => {
                let hex = &s[1..];
                let bytes: Option<Vec<u8>> = (0..hex.len())
                    .step_by(2)
                    .map(|i| {
                        hex.get(i..i + 2)
                            .and_then(|h| u8::from_str_radix(h, 16).ok())
                    })
                    .collect();
                match bytes {
                    Some(bytes) => match String::from_utf8(bytes) {
                        Ok(text) => out.push_str(&text),
                        Err(e) => out.extend(e.into_bytes().into_iter().map(char::from)),
                    },
                    None => {
                        out.push(escape);
                        out.push_str(sequence);
                        out.push(escape);
                    }
                }
            }
            _ => {}
        }
        rest = &after[end + escape.len_utf8()..];
    }
    out.push_str(rest);
    out
}

/// MSH-18 (first repetition) read from the raw bytes: the header is ASCII in every character
/// set the translator accepts.
fn declared_charset(bytes: &[u8]) -> Result<String, V2Error> {
    let end = bytes
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(bytes.len());
    let header = &bytes[..end];
    if header.len() < 4 || &header[..3] != b"MSH" {
        return Err(V2Error::rejected(
            ErrorCode::SegmentSequence,
            "the message does not start with an MSH segment",
            Some(("MSH", 1)),
            None,
        ));
    }
    let separator = header[3];
    // parts[0] = "MSH", parts[1] = MSH-2, parts[k] = MSH-(k+1)
    let raw = header.split(|&b| b == separator).nth(17).unwrap_or(b"");
    let repetition = header.get(5).copied().unwrap_or(b'~');
    let first = raw.split(|&b| b == repetition).next().unwrap_or(b"");
    Ok(String::from_utf8_lossy(first).trim().to_owned())
}

/// Decodes the message's bytes as its declared character set. Without a declaration the
/// standard's default is ASCII; UTF-8 is accepted there too (ASCII is a subset, and senders
/// that leave MSH-18 empty commonly send UTF-8).
fn decode(bytes: &[u8], charset: &str) -> Result<String, V2Error> {
    let bad = |what: &str| {
        V2Error::rejected(
            ErrorCode::DataType,
            format!("the message is not valid {what} as MSH-18 declares"),
            Some(("MSH", 18)),
            None,
        )
    };
    match charset.to_ascii_uppercase().as_str() {
        "" => String::from_utf8(bytes.to_vec()).map_err(|_| bad("UTF-8 (no MSH-18)")),
        "ASCII" => {
            if bytes.is_ascii() {
                Ok(String::from_utf8_lossy(bytes).into_owned())
            } else {
                Err(bad("ASCII"))
            }
        }
        "UNICODE UTF-8" | "UTF-8" => String::from_utf8(bytes.to_vec()).map_err(|_| bad("UTF-8")),
        // ISO 8859-1: every byte is the code point of the same value
        "8859/1" => Ok(bytes.iter().map(|&b| char::from(b)).collect()),
        // ISO 8859-15: 8859-1 with eight code points replaced
        "8859/15" => Ok(bytes.iter().map(|&b| latin9(b)).collect()),
        other => Err(V2Error {
            severity: Severity::Rejected,
            // a value outside the character sets of table 0211 we read
            code: ErrorCode::TableValueNotFound,
            message: format!(
                "unsupported character set {other:?} in MSH-18 (supported: ASCII, 8859/1, 8859/15, UNICODE UTF-8)"
            ),
            location: super::Location {
                segment: "MSH".to_owned(),
                sequence: 1,
                field: Some(18),
                component: None,
            },
        }),
    }
}

fn latin9(b: u8) -> char {
    match b {
        0xA4 => '\u{20AC}',
        0xA6 => '\u{0160}',
        0xA8 => '\u{0161}',
        0xB4 => '\u{017D}',
        0xB8 => '\u{017E}',
        0xBC => '\u{0152}',
        0xBD => '\u{0153}',
        0xBE => '\u{0178}',
        other => char::from(other),
    }
}
