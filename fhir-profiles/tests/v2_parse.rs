//! HL7 v2 parsing edge cases: delimiters, escapes, byte-order mark, segment terminators,
//! character sets, repetitions, and an empty field against the explicit null `""`.

use fhir_profiles::v2::{ErrorCode, Severity, parse, read_header, translate};

fn msh(charset: &str) -> String {
    format!(
        "MSH|^~\\&|APP|FAC|RCV|RFAC|20240101120000+0000||ADT^A01^ADT_A01|C1|P|2.5||||||{charset}"
    )
}

fn pid_name(bytes: &[u8]) -> String {
    let message = parse(bytes).expect("parses");
    let pid = message
        .segments
        .iter()
        .find(|s| s.id == "PID")
        .expect("PID");
    let field = pid.field(5).expect("PID-5");
    let rep = &field.repetitions[0];
    format!("{}|{}", rep.text(1), rep.text(2))
}

#[test]
fn delimiters_come_from_msh() {
    let text =
        "MSH#$*\\@#APP#FAC#RCV#RFAC#20240101##ADT$A01#C1#P#2.5\rPID#1##ID1$$$AUTH@OID$MR*X2#";
    let message = parse(text.as_bytes()).expect("parses");
    let msh = &message.segments[0];
    assert_eq!(msh.text(1), "#");
    assert_eq!(msh.text(2), "$*\\@");
    let pid = &message.segments[1];
    let ids = pid.field(3).expect("PID-3");
    assert_eq!(ids.repetitions.len(), 2, "`*` separates repetitions");
    assert_eq!(ids.repetitions[0].text(1), "ID1");
    assert_eq!(
        ids.repetitions[0].components[3].subcomponents,
        ["AUTH", "OID"]
    );
    assert_eq!(ids.repetitions[1].text(1), "X2");
}

#[test]
fn escape_sequences_are_decoded() {
    let text = format!(
        "{}\rPID|1||X1||A\\F\\B\\S\\C\\T\\D\\R\\E\\E\\^\\X41C3A9\\Line\\.br\\two\\H\\!",
        msh("")
    );
    assert_eq!(pid_name(text.as_bytes()), "A|B^C&D~E\\|AéLine\ntwo!");
}

#[test]
fn the_truncation_escape_is_the_declared_truncation_character() {
    // `#` unless MSH-2 declares a fifth character (v2.7 on)
    let text = format!("{}\rPID|1||X1||LONGNAM\\P\\", msh(""));
    assert_eq!(pid_name(text.as_bytes()), "LONGNAM#|");
    let declared = format!("{}\rPID|1||X1||LONGNAM\\P\\", msh("")).replacen("^~\\&", "^~\\&!", 1);
    assert!(declared.starts_with("MSH|^~\\&!|"), "{declared}");
    assert_eq!(pid_name(declared.as_bytes()), "LONGNAM!|");
}

#[test]
fn an_unterminated_escape_is_kept() {
    let text = format!("{}\rPID|1||X1||SMITH\\F^JOHN", msh(""));
    assert_eq!(pid_name(text.as_bytes()), "SMITH\\F|JOHN");
}

#[test]
fn bom_and_any_segment_terminator_are_accepted() {
    for terminator in ["\r", "\n", "\r\n"] {
        let mut bytes = b"\xEF\xBB\xBF".to_vec();
        bytes.extend(format!("{}{terminator}PID|1||X1||DOE^JANE{terminator}", msh("")).as_bytes());
        let message = parse(&bytes).expect("parses");
        assert_eq!(message.segments.len(), 2, "{terminator:?}");
        assert_eq!(message.segments[0].id, "MSH");
        assert_eq!(pid_name(&bytes), "DOE|JANE");
    }
}

#[test]
fn character_sets_of_msh_18() {
    // ISO 8859-1: byte 0xFC is ü
    let mut latin1 = format!("{}\rPID|1||X1||M", msh("8859/1")).into_bytes();
    latin1.push(0xFC);
    latin1.extend(b"LLER^J");
    latin1.push(0xF6);
    latin1.extend(b"RG");
    assert_eq!(pid_name(&latin1), "MüLLER|JöRG");
    assert_eq!(parse(&latin1).expect("parses").charset, "8859/1");

    let utf8 = format!("{}\rPID|1||X1||MÜLLER^JÖRG", msh("UNICODE UTF-8"));
    assert_eq!(pid_name(utf8.as_bytes()), "MÜLLER|JÖRG");

    let undeclared = format!("{}\rPID|1||X1||MÜLLER^JÖRG", msh(""));
    assert_eq!(pid_name(undeclared.as_bytes()), "MÜLLER|JÖRG");

    // ASCII declared, a byte above 0x7F sent
    let err =
        parse(format!("{}\rPID|1||X1||MÜLLER", msh("ASCII")).as_bytes()).expect_err("not ASCII");
    assert_eq!(err.severity, Severity::Rejected);
    assert_eq!(err.code, ErrorCode::DataType);
    assert_eq!(err.location.segment, "MSH");
    assert_eq!(err.location.field, Some(18));

    // UTF-8 declared, Latin-1 sent
    let mut mislabeled = format!("{}\rPID|1||X1||M", msh("UNICODE UTF-8")).into_bytes();
    mislabeled.push(0xFC);
    let err = parse(&mislabeled).expect_err("not UTF-8");
    assert_eq!(err.severity, Severity::Rejected);
    assert_eq!(err.code.code(), 102);
    assert_eq!(err.location.field, Some(18));

    let err =
        parse(format!("{}\rPID|1||X1||DOE", msh("ISO IR87")).as_bytes()).expect_err("unsupported");
    assert_eq!(err.severity, Severity::Rejected);
    assert_eq!(err.severity.ack_code(), "AR");
    assert!(err.message.contains("ISO IR87"), "{}", err.message);
    // a value outside the character sets supported (of table 0211)
    assert_eq!(err.code, ErrorCode::TableValueNotFound);
    assert_eq!(err.code.code(), 103);
    assert_eq!(err.location.field, Some(18));
}

#[test]
fn empty_and_explicit_null_are_told_apart() {
    let text = format!("{}\rPID|1||X1||DOE^JANE|||\"\"|", msh(""));
    let message = parse(text.as_bytes()).expect("parses");
    let pid = &message.segments[1];
    assert_eq!(pid.text(6), "", "an empty field");
    assert!(pid.field(6).expect("present").repetitions.is_empty());
    assert_eq!(pid.text(8), "\"\"", "the explicit null is kept as sent");
    assert_eq!(pid.text(30), "", "a field past the end");
    assert!(pid.field(30).is_none());
}

#[test]
fn what_is_not_a_message_is_rejected() {
    for bytes in [
        b"PID|1||X1".as_slice(),
        b"".as_slice(),
        b"MSH".as_slice(),
        b"MSH|^".as_slice(),
    ] {
        let err = parse(bytes).expect_err("rejected");
        assert_eq!(err.severity, Severity::Rejected, "{bytes:?}");
        assert_eq!(err.location.segment, "MSH");
        assert!(
            matches!(
                err.code,
                ErrorCode::SegmentSequence | ErrorCode::RequiredFieldMissing | ErrorCode::DataType
            ),
            "{bytes:?}: {:?}",
            err.code
        );
    }
    let err = parse(b"PID|1||X1").expect_err("no MSH first");
    assert_eq!(err.code, ErrorCode::SegmentSequence);
    let err = parse(b"MSH|^").expect_err("MSH-2 too short");
    assert_eq!(
        (err.code, err.location.field),
        (ErrorCode::DataType, Some(2))
    );
    let err = parse(format!("{}\rP!D|1", msh("")).as_bytes()).expect_err("bad segment id");
    assert_eq!(err.severity, Severity::Rejected);
    assert_eq!(err.code, ErrorCode::SegmentSequence);
}

#[test]
fn header_facts() {
    let text = format!("{}\rPID|1||X1||DOE", msh("UNICODE UTF-8"));
    let header = read_header(text.as_bytes()).expect("header");
    assert_eq!(header.message_type, "ADT");
    assert_eq!(header.trigger, "A01");
    assert_eq!(header.structure, "ADT_A01");
    assert_eq!(header.control_id, "C1");
    assert_eq!(header.sending_application, "APP");
    assert_eq!(header.sending_facility, "FAC");
    assert_eq!(header.receiving_application, "RCV");
    assert_eq!(header.receiving_facility, "RFAC");
    assert_eq!(header.version, "2.5");
    assert_eq!(header.processing_id, "P");
    assert_eq!(header.charset, "UNICODE UTF-8");
    assert_eq!(header.field_separator, "|");
    assert_eq!(header.encoding_characters, "^~\\&");
}

#[test]
fn the_header_of_a_refused_message_can_still_be_read() {
    let mut bytes = format!("{}\rPID|1||X1||M", msh("ISO IR87")).into_bytes();
    bytes.push(0xFC);
    assert!(parse(&bytes).is_err());
    let header = read_header(&bytes).expect("the MSH");
    assert_eq!(header.control_id, "C1");
    assert_eq!(header.sending_application, "APP");
    assert_eq!(header.charset, "ISO IR87");
    assert!(read_header(b"PID|1||X1").is_none());
}

#[test]
fn versions_outside_2_3_to_2_8_are_rejected() {
    for (version, ok) in [
        ("2.2", false),
        ("2.3", true),
        ("2.3.1", true),
        ("2.5.1", true),
        ("2.8", true),
        ("2.9", false),
        ("3.0", false),
    ] {
        let text = format!(
            "MSH|^~\\&|A|B|C|D|20240101||ADT^A01^ADT_A01|C1|P|{version}\rPID|1||X1^^^AUTH||DOE\rPV1|1|O"
        );
        match translate(text.as_bytes()) {
            Ok(_) => assert!(ok, "{version} accepted"),
            Err(e) => {
                assert!(!ok, "{version}: {e}");
                assert_eq!(e.severity, Severity::Rejected);
                assert_eq!(e.location.field, Some(12));
            }
        }
    }
}

#[test]
fn a_message_without_control_id_is_rejected() {
    let err = translate(b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|  |P|2.5\rPID|1||X1||DOE")
        .expect_err("rejected");
    assert_eq!(err.severity, Severity::Rejected);
    assert_eq!(err.location.field, Some(10));
}
