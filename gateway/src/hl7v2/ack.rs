//! The acknowledgment of a message (HL7 v2 chapter 2, "original acknowledgment mode"): an
//! `ACK` made of MSH (sender and receiver swapped, the message's version and encoding
//! characters, a control id of its own), MSA (the code and the message's MSH-10) and, for a
//! refusal, ERR saying what was wrong.
//!
//! The header is read here rather than taken from the translator's: the ACK and the
//! idempotency key keep MSH-3 to MSH-6 exactly as sent (escapes not decoded), and a message
//! the translator refuses still gets an answer in its own dialect.

use std::fmt::Write as _;

pub use fhir_profiles::v2::ErrorCode;

/// MSA-1: what became of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// Application Accept: translated, stored and logged, committed.
    Accept,
    /// Application Error: the message was understood but its content could not be applied;
    /// sending it again unchanged will fail again. Nothing was written.
    Error,
    /// Application Reject: not processed (an unsupported type or version, a message that is
    /// not HL7 v2, or a failure of the gateway itself); nothing was written.
    Reject,
}

impl AckCode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::Accept => "AA",
            AckCode::Error => "AE",
            AckCode::Reject => "AR",
        }
    }

    pub fn parse(code: &str) -> Option<AckCode> {
        match code {
            "AA" => Some(AckCode::Accept),
            "AE" => Some(AckCode::Error),
            "AR" => Some(AckCode::Reject),
            _ => None,
        }
    }
}

/// Where in the message an error is (ERR-2, an ERL): segment id, its position among the
/// message's segments (1-based), the field and component when known.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorLocation {
    pub segment: String,
    pub sequence: Option<usize>,
    pub field: Option<usize>,
    pub component: Option<usize>,
}

/// What ERR says about a refused message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorDetail {
    /// ERR-3, an HL7 error code of table 0357 (e.g. 101 required field missing, 102 data
    /// type error, 200 unsupported message type, 203 unsupported version id, 207
    /// application internal error), as the translator or the intake decided it.
    pub code: ErrorCode,
    /// ERR-2, when the error is at one place of the message.
    pub location: Option<ErrorLocation>,
    /// ERR-8, for the people who read the sending system's error queue. Never logged.
    pub message: String,
}

/// The MSH of a message, as far as the acknowledgment needs it: the delimiters, who sent it
/// to whom, its type, control id, processing id and version. Fields are kept as sent
/// (escape sequences included) since the ACK echoes them in the same encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// MSH-1.
    pub field_separator: char,
    /// MSH-2: component, repetition, escape, subcomponent (and truncation, 2.7+).
    pub encoding_characters: String,
    /// MSH-3 and MSH-4.
    pub sending_application: String,
    pub sending_facility: String,
    /// MSH-5 and MSH-6.
    pub receiving_application: String,
    pub receiving_facility: String,
    /// MSH-9 (e.g. `ADT^A01^ADT_A01`).
    pub message_type: String,
    /// MSH-10.
    pub control_id: String,
    /// MSH-11 (e.g. `P`).
    pub processing_id: String,
    /// MSH-12 (e.g. `2.5.1`), first component.
    pub version: String,
}

impl Header {
    /// Reads the MSH segment at the start of a message (after an optional UTF-8 byte-order
    /// mark and blank lines). `None` when the message does not begin with a readable MSH.
    pub fn read(message: &[u8]) -> Option<Header> {
        let message = message.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(message);
        let start = message.iter().position(|b| !b.is_ascii_whitespace())?;
        let message = &message[start..];
        let end = message
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(message.len());
        let segment = String::from_utf8_lossy(&message[..end]);
        let rest = segment.strip_prefix("MSH")?;
        let field_separator = rest.chars().next()?;
        if field_separator.is_alphanumeric() || field_separator.is_whitespace() {
            return None;
        }
        let fields: Vec<&str> = rest[field_separator.len_utf8()..]
            .split(field_separator)
            .collect();
        // fields[0] is MSH-2, fields[n - 2] is MSH-n
        let field = |n: usize| fields.get(n - 2).copied().unwrap_or("").to_owned();
        let encoding_characters = field(2);
        if encoding_characters.chars().count() < 4 {
            return None;
        }
        let component = encoding_characters.chars().next()?;
        Some(Header {
            field_separator,
            sending_application: field(3),
            sending_facility: field(4),
            receiving_application: field(5),
            receiving_facility: field(6),
            message_type: field(9),
            control_id: field(10),
            processing_id: field(11),
            version: field(12).split(component).next().unwrap_or("").to_owned(),
            encoding_characters,
        })
    }

    /// Who sent the message, for idempotency: MSH-3 and MSH-4 as sent.
    pub fn sender(&self) -> String {
        format!(
            "{}{}{}",
            self.sending_application, self.field_separator, self.sending_facility
        )
    }

    pub(crate) fn component(&self) -> char {
        self.encoding_characters.chars().next().unwrap_or('^')
    }

    fn subcomponent(&self) -> char {
        self.encoding_characters.chars().nth(3).unwrap_or('&')
    }

    /// The trigger event of MSH-9 (`A01` of `ADT^A01^ADT_A01`).
    fn trigger(&self) -> &str {
        self.message_type
            .split(self.component())
            .nth(1)
            .unwrap_or("")
    }

    /// Whether the version is 2.5 or later (ERR-2..ERR-8 exist; earlier versions have ERR-1).
    fn has_modern_err(&self) -> bool {
        let mut parts = self.version.split('.');
        let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(2);
        let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(5);
        (major, minor) >= (2, 5)
    }

    /// Escapes text for a field of this message (HL7 v2 chapter 2.7: `\F\ \S\ \R\ \E\ \T\`),
    /// and turns line breaks into spaces.
    fn escape(&self, text: &str) -> String {
        let mut chars = self.encoding_characters.chars();
        let component = chars.next().unwrap_or('^');
        let repetition = chars.next().unwrap_or('~');
        let escape = chars.next().unwrap_or('\\');
        let subcomponent = chars.next().unwrap_or('&');
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            let code = if c == escape {
                Some('E')
            } else if c == self.field_separator {
                Some('F')
            } else if c == component {
                Some('S')
            } else if c == repetition {
                Some('R')
            } else if c == subcomponent {
                Some('T')
            } else {
                None
            };
            match code {
                Some(code) => {
                    out.push(escape);
                    out.push(code);
                    out.push(escape);
                }
                None if c == '\r' || c == '\n' => out.push(' '),
                None => out.push(c),
            }
        }
        out
    }
}

/// The header an answer uses when the message has no readable MSH: the default delimiters
/// and version 2.5.
fn fallback_header() -> Header {
    Header {
        field_separator: '|',
        encoding_characters: "^~\\&".to_owned(),
        sending_application: String::new(),
        sending_facility: String::new(),
        receiving_application: String::new(),
        receiving_facility: String::new(),
        message_type: String::new(),
        control_id: String::new(),
        processing_id: "P".to_owned(),
        version: "2.5".to_owned(),
    }
}

/// Builds the ACK of a message (segments ended by `\r`, as HL7 v2 requires).
pub fn build(header: Option<&Header>, code: AckCode, error: Option<&ErrorDetail>) -> String {
    let fallback;
    let header = match header {
        Some(header) => header,
        None => {
            fallback = fallback_header();
            &fallback
        }
    };
    let f = header.field_separator;
    let c = header.component();
    let s = header.subcomponent();
    let now = time::OffsetDateTime::now_utc();
    let timestamp = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}+0000",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    // 20 characters: MSH-10 is at most 20 long before v2.5
    let control_id: String = uuid::Uuid::new_v4().simple().to_string()[..20].to_uppercase();
    let message_type = if header.trigger().is_empty() {
        "ACK".to_owned()
    } else if header.has_modern_err() || header.version.starts_with("2.4") {
        format!("ACK{c}{}{c}ACK", header.trigger())
    } else {
        format!("ACK{c}{}", header.trigger())
    };
    let processing_id = if header.processing_id.is_empty() {
        "P"
    } else {
        &header.processing_id
    };
    let mut ack = String::with_capacity(256);
    // infallible: writing to a String
    let _ = write!(
        ack,
        "MSH{f}{}{f}{}{f}{}{f}{}{f}{}{f}{timestamp}{f}{f}{message_type}{f}{control_id}{f}{processing_id}{f}{}\r",
        header.encoding_characters,
        header.receiving_application,
        header.receiving_facility,
        header.sending_application,
        header.sending_facility,
        header.version,
    );
    let _ = write!(ack, "MSA{f}{}{f}{}\r", code.as_str(), header.control_id);
    if let Some(error) = error {
        let text = header.escape(&error.message);
        let location = error.location.as_ref().map(|l| {
            let number = |n: Option<usize>| n.map(|n| n.to_string()).unwrap_or_default();
            (
                header.escape(&l.segment),
                number(l.sequence),
                number(l.field),
                number(l.component),
            )
        });
        if header.has_modern_err() {
            // ERR-2 location (ERL), ERR-3 HL7 error code (CWE, table 0357), ERR-4 severity,
            // ERR-8 user message
            let erl = location
                .map(|(segment, sequence, field, component)| {
                    let mut erl = format!("{segment}{c}{sequence}{c}{field}");
                    if !component.is_empty() {
                        let _ = write!(erl, "{c}1{c}{component}");
                    }
                    erl
                })
                .unwrap_or_default();
            let _ = write!(
                ack,
                "ERR{f}{f}{erl}{f}{}{c}{}{c}HL70357{f}E{f}{f}{f}{f}{text}\r",
                error.code.code(),
                error.code.text()
            );
        } else {
            // ERR-1 (before v2.5): segment^sequence^field^code&text&HL70357, and the message
            // as the code's alternate text
            let (segment, sequence, field, _) = location.unwrap_or_default();
            let _ = write!(
                ack,
                "ERR{f}{segment}{c}{sequence}{c}{field}{c}{}{s}{}{s}HL70357{s}{s}{text}\r",
                error.code.code(),
                error.code.text()
            );
        }
    }
    ack
}

#[cfg(test)]
mod tests {
    use super::*;

    const A01: &[u8] = b"MSH|^~\\&|LAB|NORTH|GW|HOSP|20260101120000||ADT^A01^ADT_A01|MSG0001|P|2.5.1\rEVN|A01\rPID|1||123^^^HOSP^MR\r";

    #[test]
    fn the_header_is_read_with_its_delimiters() {
        let header = Header::read(A01).expect("an MSH");
        assert_eq!(header.field_separator, '|');
        assert_eq!(header.encoding_characters, "^~\\&");
        assert_eq!(header.sending_application, "LAB");
        assert_eq!(header.sending_facility, "NORTH");
        assert_eq!(header.receiving_application, "GW");
        assert_eq!(header.message_type, "ADT^A01^ADT_A01");
        assert_eq!(header.control_id, "MSG0001");
        assert_eq!(header.version, "2.5.1");
        assert_eq!(header.sender(), "LAB|NORTH");
    }

    #[test]
    fn a_byte_order_mark_and_other_delimiters_are_understood() {
        let header = Header::read(b"\xEF\xBB\xBFMSH#*~\\&#A#B#C#D#T##ORU*R01#X9#P#2.3\nPID#1\n")
            .expect("an MSH");
        assert_eq!(header.field_separator, '#');
        assert_eq!(header.control_id, "X9");
        assert_eq!(header.version, "2.3");
        let ack = build(Some(&header), AckCode::Accept, None);
        assert!(ack.starts_with("MSH#*~\\&#C#D#A#B#"), "{ack}");
        assert!(ack.contains("#ACK*R01#"), "{ack}");
        assert!(ack.ends_with("\rMSA#AA#X9\r"), "{ack}");
    }

    #[test]
    fn what_is_not_an_msh_has_no_header() {
        for text in [
            &b""[..],
            b"PID|1",
            b"MSH",
            b"MSHA^~\\&",
            b"MSH|^|A",
            b"hello world",
        ] {
            assert_eq!(
                Header::read(text),
                None,
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn the_ack_swaps_sender_and_receiver_and_echoes_the_control_id() {
        let header = Header::read(A01).expect("an MSH");
        let ack = build(Some(&header), AckCode::Accept, None);
        let segments: Vec<&str> = ack.split('\r').filter(|s| !s.is_empty()).collect();
        assert_eq!(segments.len(), 2, "{ack}");
        let msh: Vec<&str> = segments[0].split('|').collect();
        assert_eq!(&msh[2..6], ["GW", "HOSP", "LAB", "NORTH"]);
        assert_eq!(msh[8], "ACK^A01^ACK");
        assert_eq!(msh[9].len(), 20);
        assert_ne!(msh[9], "MSG0001");
        assert_eq!(msh[11], "2.5.1");
        assert_eq!(segments[1], "MSA|AA|MSG0001");
    }

    #[test]
    fn an_error_says_where_and_what_escaped() {
        let header = Header::read(A01).expect("an MSH");
        let detail = ErrorDetail {
            code: ErrorCode::DataType,
            location: Some(ErrorLocation {
                segment: "PID".to_owned(),
                sequence: Some(3),
                field: Some(7),
                component: None,
            }),
            message: "birth date 2026|13 is not a date ^ at all\r".to_owned(),
        };
        let ack = build(Some(&header), AckCode::Error, Some(&detail));
        let err = ack.split('\r').nth(2).expect("an ERR");
        let fields: Vec<&str> = err.split('|').collect();
        assert_eq!(fields[0], "ERR");
        assert_eq!(fields[2], "PID^3^7");
        assert_eq!(fields[3], "102^Data type error^HL70357");
        assert_eq!(fields[4], "E");
        assert_eq!(
            fields[8],
            "birth date 2026\\F\\13 is not a date \\S\\ at all "
        );
        assert!(ack.contains("\rMSA|AE|MSG0001\r"), "{ack}");
    }

    #[test]
    fn before_version_2_5_the_error_is_in_err_1() {
        let header = Header::read(b"MSH|^~\\&|A|B|C|D|||ADT^A08|7|P|2.3\r").expect("an MSH");
        let detail = ErrorDetail {
            code: ErrorCode::RequiredFieldMissing,
            location: Some(ErrorLocation {
                segment: "PID".to_owned(),
                sequence: Some(2),
                field: Some(3),
                component: None,
            }),
            message: "no patient identifier".to_owned(),
        };
        let ack = build(Some(&header), AckCode::Error, Some(&detail));
        assert!(ack.starts_with("MSH|^~\\&|C|D|A|B|"), "{ack}");
        assert!(ack.contains("|ACK^A08|"), "{ack}");
        assert!(
            ack.ends_with(
                "ERR|PID^2^3^101&Required field missing&HL70357&&no patient identifier\r"
            ),
            "{ack}"
        );
    }

    #[test]
    fn a_message_without_header_is_answered_in_the_default_dialect() {
        let detail = ErrorDetail {
            code: ErrorCode::SegmentSequence,
            location: None,
            message: "the message does not begin with an MSH segment".to_owned(),
        };
        let ack = build(None, AckCode::Reject, Some(&detail));
        assert!(ack.starts_with("MSH|^~\\&|"), "{ack}");
        assert!(ack.contains("\rMSA|AR|\r"), "{ack}");
        assert!(
            ack.contains("ERR|||100^Segment sequence error^HL70357|E|"),
            "{ack}"
        );
    }
}
