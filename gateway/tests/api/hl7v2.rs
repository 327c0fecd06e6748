//! HL7 v2 intake (issue 6): MLLP round trips with an independent client (the Python `hl7`
//! package's `mllp_send --loose`, installed by scripts/test.sh into .cache/venv) and with a
//! raw socket for framing (pieces, several messages in one write, a byte-order mark, `\n`
//! terminators, bytes between frames), TLS, refusals that write nothing, idempotent
//! re-sends, per-patient order under concurrent connections, and `POST [base]/$hl7v2`.
//! Every test runs against PostgreSQL and SQLite. The messages are this file's own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gateway::hl7v2::mllp::{Deframer, frame};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::{Db, TestApp, spawn_app_with};
use crate::on_both;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

async fn app_with_mllp(db: Db) -> TestApp {
    spawn_app_with(db, |config| {
        config.mllp.enabled = true;
        config.mllp.port = 0;
    })
    .await
}

/// An ADT message (v2.5.1) about one patient, segments ended by `\r`.
fn adt(event: &str, control_id: &str, mrn: &str, family: &str, given: &str) -> String {
    format!(
        "MSH|^~\\&|ADT1|NORTH|GATEWAY|HOSP|20260101120000||ADT^{event}^ADT_A01|{control_id}|P|2.5.1\r\
         EVN|{event}|20260101120000\r\
         PID|1||{mrn}^^^HOSP^MR||{family}^{given}||19800101|F|||1 Main St^^Springfield^IL^62701\r\
         PV1|1|I|WARD1^101^A\r"
    )
}

/// Reads one framed answer.
async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S, deframer: &mut Deframer) -> String {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(message) = deframer.next_message().expect("an answer within the limit") {
            return String::from_utf8(message).expect("an ACK in UTF-8");
        }
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk))
            .await
            .expect("an answer within 30 s")
            .expect("read");
        assert!(n > 0, "the gateway closed the connection without answering");
        deframer.push(&chunk[..n]);
    }
}

/// Sends each message in its own frame and returns the ACKs, in order.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    messages: &[&[u8]],
) -> Vec<String> {
    let mut deframer = Deframer::new(1 << 20);
    let mut acks = Vec::new();
    for message in messages {
        stream.write_all(&frame(message)).await.expect("write");
        acks.push(read_frame(stream, &mut deframer).await);
    }
    acks
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(("127.0.0.1", app.mllp_port.expect("the MLLP listener runs")))
        .await
        .expect("connect to the MLLP listener")
}

/// The fields of the first segment `id` of an ACK.
fn segment(ack: &str, id: &str) -> Vec<String> {
    ack.split('\r')
        .find(|s| s.starts_with(&format!("{id}|")))
        .unwrap_or_else(|| panic!("no {id} in {ack:?}"))
        .split('|')
        .map(str::to_owned)
        .collect()
}

/// MSA-1 and MSA-2.
fn msa(ack: &str) -> (String, String) {
    let msa = segment(ack, "MSA");
    (msa[1].clone(), msa[2].clone())
}

async fn count(app: &TestApp, table: &str) -> i64 {
    let mut conn = app.database_connection().await;
    // audited: `table` is one of the test's constants
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
        .fetch_one(&mut conn)
        .await
        .expect("count")
}

/// Rows of versions, log leaves and accepted messages: what a refused message must not touch.
async fn footprint(app: &TestApp) -> (i64, i64, i64) {
    (
        count(app, "resource_version").await,
        count(app, "log_leaf").await,
        count(app, "hl7v2_message").await,
    )
}

/// The resources of a search (first page).
async fn search(app: &TestApp, query: &str) -> Vec<Value> {
    let bundle: Value = app
        .client
        .get(app.url(query))
        .send()
        .await
        .expect("search")
        .json()
        .await
        .expect("a Bundle");
    bundle["entry"]
        .as_array()
        .map(|entries| entries.iter().map(|e| e["resource"].clone()).collect())
        .unwrap_or_default()
}

async fn patients_with(app: &TestApp, mrn: &str) -> Vec<Value> {
    search(app, &format!("Patient?identifier={mrn}")).await
}

on_both!(
    the_python_hl7_client_gets_aa_for_each_message,
    |db| async move {
        let app = app_with_mllp(db).await;
        let mllp_send = workspace().join(".cache/venv/bin/mllp_send");
        assert!(
            mllp_send.exists(),
            "{} is missing: scripts/test.sh installs the Python hl7 package (pip install -r gateway/tests/clients/requirements.txt)",
            mllp_send.display()
        );
        // two messages in a file with \n line ends, as --loose reads them
        let file = tempfile::NamedTempFile::new().expect("a file");
        let text = format!(
            "{}\n{}\n",
            adt("A01", "PY-1", "PY100", "Lovelace", "Ada").replace('\r', "\n"),
            adt("A08", "PY-2", "PY100", "Byron", "Ada").replace('\r', "\n"),
        );
        std::fs::write(file.path(), text).expect("write");
        let port = app.mllp_port.expect("MLLP").to_string();
        let path = file.path().to_path_buf();
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(mllp_send)
                .args(["--loose", "-p", &port, "-f"])
                .arg(path)
                .arg("127.0.0.1")
                .output()
        })
        .await
        .expect("joined")
        .expect("mllp_send runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("MSA|AA|PY-1"), "{stdout:?}");
        assert!(stdout.contains("MSA|AA|PY-2"), "{stdout:?}");
        let patients = patients_with(&app, "PY100").await;
        assert_eq!(patients.len(), 1, "{patients:?}");
        assert_eq!(
            patients[0]["name"][0]["family"], "Byron",
            "the A08 applied after the A01"
        );
        assert_eq!(patients[0]["meta"]["versionId"], "2");
    }
);

on_both!(
    frames_in_pieces_together_or_with_noise_are_all_answered,
    |db| async move {
        let app = app_with_mllp(db).await;
        let mut stream = connect(&app).await;
        let mut deframer = Deframer::new(1 << 20);

        // one message, one byte at a time
        let first = frame(adt("A01", "RAW-1", "RAW100", "Hopper", "Grace").as_bytes());
        for byte in &first {
            stream.write_all(&[*byte]).await.expect("write");
            stream.flush().await.expect("flush");
        }
        let ack = read_frame(&mut stream, &mut deframer).await;
        assert_eq!(msa(&ack), ("AA".to_owned(), "RAW-1".to_owned()), "{ack:?}");

        // two messages in one write, with bytes outside the frames
        let mut both = b"\r\n".to_vec();
        both.extend(frame(
            adt("A08", "RAW-2", "RAW100", "Hopper", "G").as_bytes(),
        ));
        both.extend(b"\n");
        both.extend(frame(
            adt("A08", "RAW-3", "RAW100", "Hopper", "Grace B").as_bytes(),
        ));
        stream.write_all(&both).await.expect("write");
        let second = read_frame(&mut stream, &mut deframer).await;
        let third = read_frame(&mut stream, &mut deframer).await;
        assert_eq!(msa(&second).1, "RAW-2");
        assert_eq!(msa(&third).1, "RAW-3");
        assert_eq!(msa(&second).0, "AA", "{second:?}");
        assert_eq!(msa(&third).0, "AA", "{third:?}");

        // a byte-order mark and \n, then \r\n, as segment terminators
        let bom = format!(
            "\u{feff}{}",
            adt("A08", "RAW-4", "RAW100", "Hopper", "Grace C").replace('\r', "\n")
        );
        let crlf = adt("A08", "RAW-5", "RAW100", "Hopper", "Grace D").replace('\r', "\r\n");
        let acks = exchange(&mut stream, &[bom.as_bytes(), crlf.as_bytes()]).await;
        assert_eq!(
            msa(&acks[0]),
            ("AA".to_owned(), "RAW-4".to_owned()),
            "{:?}",
            acks[0]
        );
        assert_eq!(
            msa(&acks[1]),
            ("AA".to_owned(), "RAW-5".to_owned()),
            "{:?}",
            acks[1]
        );

        let patients = patients_with(&app, "RAW100").await;
        assert_eq!(patients.len(), 1);
        assert_eq!(patients[0]["name"][0]["given"][0], "Grace D");
        assert_eq!(patients[0]["meta"]["versionId"], "5");

        // the ACK: sender and receiver swapped, the version echoed, a control id of its own
        let msh = segment(&acks[1], "MSH");
        assert_eq!(&msh[2..6], ["GATEWAY", "HOSP", "ADT1", "NORTH"]);
        assert_eq!(msh[8], "ACK^A08^ACK");
        assert_ne!(msh[9], "RAW-5");
        assert_eq!(msh[11], "2.5.1");
    }
);

on_both!(
    refused_messages_get_ae_or_ar_and_write_nothing,
    |db| async move {
        let app = app_with_mllp(db).await;
        let mut stream = connect(&app).await;
        // something first, so that "nothing" is measured against a database with content
        let ok = adt("A01", "BAD-0", "BAD100", "Curie", "Marie");
        assert_eq!(
            msa(&exchange(&mut stream, &[ok.as_bytes()]).await[0]).0,
            "AA"
        );
        // two stored patients with one identifier: a message about it cannot tell which
        for id in ["dup-a", "dup-b"] {
            let (status, body) = app
                .put(
                    &format!("Patient/{id}"),
                    &serde_json::json!({"resourceType": "Patient", "id": id,
                        "identifier": [{"system": "HOSP", "value": "DUP205"}]}),
                )
                .await;
            assert_eq!(status, 201, "{body}");
        }
        let before = footprint(&app).await;

        let not_hl7 = b"hello, is this the lab?".to_vec();
        let unsupported =
            adt("A01", "BAD-2", "BAD200", "X", "Y").replace("ADT^A01^ADT_A01", "ZZZ^Z99");
        let bad_version = adt("A01", "BAD-3", "BAD300", "X", "Y").replace("|2.5.1\r", "|9.9\r");
        let no_patient_id = adt("A01", "BAD-4", "", "Nobody", "Known");
        let no_control_id = adt("A01", "", "BAD500", "X", "Y");
        let unsupported_event =
            adt("A01", "BAD-6", "BAD600", "X", "Y").replace("ADT^A01^ADT_A01", "ADT^A17");
        let bad_processing_id =
            adt("A01", "BAD-7", "BAD700", "X", "Y").replace("|P|2.5.1\r", "|Q|2.5.1\r");
        let no_pid = adt("A01", "BAD-8", "BAD800", "X", "Y").replace("\rPID|", "\rZZZ|");
        // a merge naming a prior patient the store does not have
        let unknown_merged = "MSH|^~\\&|ADT1|NORTH|GATEWAY|HOSP|20260101120000||ADT^A40^ADT_A39|BAD-9|P|2.5.1\r\
             EVN|A40|20260101120000\r\
             PID|1||BAD100^^^HOSP^MR||Curie^Marie\r\
             MRG|NOBODY999^^^HOSP^MR\r";
        let ambiguous = adt("A08", "BAD-10", "DUP205", "Twin", "Either");
        // ERR-3 (code^text^HL70357) and ERR-2 (segment^sequence^field)
        let cases: Vec<(&str, &[u8], &str, &str, &str)> = vec![
            (
                "not an HL7 message",
                &not_hl7,
                "AR",
                "100^Segment sequence error^HL70357",
                "",
            ),
            (
                "an unsupported message type",
                unsupported.as_bytes(),
                "AR",
                "200^Unsupported message type^HL70357",
                "MSH^1^9^1^1",
            ),
            (
                "an unsupported trigger event",
                unsupported_event.as_bytes(),
                "AR",
                "201^Unsupported event code^HL70357",
                "MSH^1^9^1^2",
            ),
            (
                "an unsupported processing id",
                bad_processing_id.as_bytes(),
                "AR",
                "202^Unsupported processing id^HL70357",
                "MSH^1^11^1^1",
            ),
            (
                "an unsupported version",
                bad_version.as_bytes(),
                "AR",
                "203^Unsupported version id^HL70357",
                "MSH^1^12",
            ),
            (
                "an A01 without PID-3",
                no_patient_id.as_bytes(),
                "AE",
                "101^Required field missing^HL70357",
                "PID^1^3^1^1",
            ),
            (
                "an A01 without PID",
                no_pid.as_bytes(),
                "AE",
                "100^Segment sequence error^HL70357",
                "PID^1^3",
            ),
            (
                "no MSH-10",
                no_control_id.as_bytes(),
                "AR",
                "101^Required field missing^HL70357",
                "MSH^1^10",
            ),
            (
                "a patient identifier two stored patients have",
                ambiguous.as_bytes(),
                "AE",
                "205^Duplicate key identifier^HL70357",
                "",
            ),
            (
                "an A40 of an unknown prior patient",
                unknown_merged.as_bytes(),
                "AE",
                "204^Unknown key identifier^HL70357",
                "",
            ),
        ];
        for (what, message, expected, hl7_code, location) in cases {
            let ack = exchange(&mut stream, &[message]).await.remove(0);
            assert_eq!(msa(&ack).0, expected, "{what}: {ack:?}");
            let err = segment(&ack, "ERR");
            // ERR-2 where, ERR-3 the HL7 error code of table 0357, ERR-4 severity, ERR-8
            // what was wrong
            assert_eq!(err[3], hl7_code, "{what}: {ack:?}");
            assert_eq!(err[2], location, "{what}: {ack:?}");
            assert_eq!(err[4], "E", "{what}: {ack:?}");
            assert!(
                err[8].len() > 10,
                "{what}: ERR-8 says what was wrong: {ack:?}"
            );
            assert_eq!(footprint(&app).await, before, "{what}: nothing is written");
        }
        assert!(patients_with(&app, "BAD200").await.is_empty());
        assert!(patients_with(&app, "BAD500").await.is_empty());
    }
);

on_both!(
    a_message_sent_again_is_acknowledged_without_a_second_write,
    |db| async move {
        let app = app_with_mllp(db).await;
        let message = adt("A01", "DUP-1", "DUP100", "Turing", "Alan");
        let mut stream = connect(&app).await;
        let first = exchange(&mut stream, &[message.as_bytes()]).await.remove(0);
        assert_eq!(msa(&first), ("AA".to_owned(), "DUP-1".to_owned()));
        let after_first = footprint(&app).await;
        assert_eq!(after_first.2, 1, "the message is recorded");

        // again on the same connection, and on four connections at once
        let again = exchange(&mut stream, &[message.as_bytes()]).await.remove(0);
        assert_eq!(msa(&again), ("AA".to_owned(), "DUP-1".to_owned()));
        let mut racing = Vec::new();
        for _ in 0..4 {
            let mut stream = connect(&app).await;
            let message = message.clone();
            racing.push(tokio::spawn(async move {
                exchange(&mut stream, &[message.as_bytes()]).await.remove(0)
            }));
        }
        for task in racing {
            assert_eq!(msa(&task.await.expect("joined")).0, "AA");
        }
        assert_eq!(footprint(&app).await, after_first, "no second write");

        // the same control id from another sender is another message
        let other_sender = message.replace("|ADT1|NORTH|", "|ADT1|SOUTH|");
        let ack = exchange(&mut stream, &[other_sender.as_bytes()])
            .await
            .remove(0);
        assert_eq!(msa(&ack).0, "AA");
        assert_eq!(footprint(&app).await.2, 2);
        let patients = patients_with(&app, "DUP100").await;
        assert_eq!(
            patients.len(),
            1,
            "the patient is matched on PID-3, never duplicated"
        );
    }
);

on_both!(
    a_new_patient_raced_on_several_connections_is_created_once,
    |db| async move {
        let app = app_with_mllp(db).await;
        let mut tasks = Vec::new();
        for n in 0..6 {
            let mut stream = connect(&app).await;
            let message = adt("A04", &format!("RACE-{n}"), "RACE100", "Noether", "Emmy");
            tasks.push(tokio::spawn(async move {
                exchange(&mut stream, &[message.as_bytes()]).await.remove(0)
            }));
        }
        for task in tasks {
            let ack = task.await.expect("joined");
            assert_eq!(msa(&ack).0, "AA", "{ack:?}");
        }
        let patients = patients_with(&app, "RACE100").await;
        assert_eq!(patients.len(), 1, "{patients:?}");
        assert_eq!(patients[0]["meta"]["versionId"], "6");
    }
);

/// An A08 naming patient ORD100 `V{n}`, with `results` OBX segments: a message with many
/// takes far longer to translate and check than one with none.
fn renaming(n: usize, results: usize) -> String {
    let mut message = adt(
        "A08",
        &format!("ORD-{n}"),
        "ORD100",
        "Name",
        &format!("V{n}"),
    );
    for i in 1..=results {
        message.push_str(&format!(
            "OBX|{i}|NM|{}^Result {i}^LN||{n}|mg/dL^^UCUM|||||F\r",
            10_000 + i
        ));
    }
    message
}

on_both!(
    messages_about_one_patient_apply_in_arrival_order_across_connections,
    |db| async move {
        let app = app_with_mllp(db).await;
        let mut first = connect(&app).await;
        let ack = exchange(
            &mut first,
            &[adt("A01", "ORD-0", "ORD100", "Name", "V0").as_bytes()],
        )
        .await;
        assert_eq!(msa(&ack[0]).0, "AA");
        // A08s renaming the patient, round robin over four connections, each connection
        // waiting for its previous ACK (as MLLP senders do), each message sent 25 ms after
        // the one before: the arrival order is the sending order. Odd ones are long (many
        // results), even ones short, so a short message arrives while the long one before it
        // is still being translated and checked: only the patient's turn, asked for when a
        // message is read, keeps the short one from being applied first (the database's
        // serialization of writes to one patient comes later, and so does a turn asked for
        // after the translation).
        let updates = 12;
        let results = 120;
        let mut connections = Vec::new();
        for _ in 0..4 {
            connections.push((connect(&app).await, Deframer::new(1 << 20)));
        }
        let mut in_flight: Vec<Option<String>> = vec![None; 4];
        for n in 1..=updates {
            let (stream, deframer) = &mut connections[n % 4];
            if let Some(control_id) = in_flight[n % 4].take() {
                let ack = read_frame(stream, deframer).await;
                assert_eq!(msa(&ack), ("AA".to_owned(), control_id), "{ack:?}");
            }
            let message = renaming(n, if n % 2 == 1 { results } else { 0 });
            stream
                .write_all(&frame(message.as_bytes()))
                .await
                .expect("write");
            in_flight[n % 4] = Some(format!("ORD-{n}"));
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        for ((stream, deframer), control_id) in connections.iter_mut().zip(in_flight) {
            if let Some(control_id) = control_id {
                let ack = read_frame(stream, deframer).await;
                assert_eq!(msa(&ack), ("AA".to_owned(), control_id), "{ack:?}");
            }
        }
        let patients = patients_with(&app, "ORD100").await;
        assert_eq!(patients.len(), 1);
        // every version, in the order sent
        let history: Value = app
            .client
            .get(app.url(&format!(
                "Patient/{}/_history?_count=100",
                patients[0]["id"].as_str().expect("an id")
            )))
            .send()
            .await
            .expect("history")
            .json()
            .await
            .expect("a Bundle");
        let givens: Vec<String> = history["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .rev()
            .map(|e| {
                e["resource"]["name"][0]["given"][0]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect();
        let expected: Vec<String> = (0..=updates).map(|n| format!("V{n}")).collect();
        assert_eq!(
            givens, expected,
            "the versions in the order the messages arrived"
        );
        assert_eq!(
            patients[0]["name"][0]["given"][0],
            format!("V{updates}"),
            "the last to arrive is the last applied"
        );
        assert_eq!(patients[0]["meta"]["versionId"], (updates + 1).to_string());
        // the long messages' results: each written once, updated by each long message
        let observations = search(&app, "Observation?code=10001&_count=5").await;
        assert_eq!(observations.len(), 1, "{observations:?}");
        assert_eq!(
            observations[0]["meta"]["versionId"],
            updates.div_ceil(2).to_string()
        );
    }
);

on_both!(the_listener_speaks_mllp_inside_tls, |db| async move {
    let fixture = |name: &str| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tls")
            .join(name)
    };
    let app = spawn_app_with(db, |config| {
        config.mllp.enabled = true;
        config.mllp.port = 0;
        config.mllp.tls_cert_file = Some(fixture("localhost-cert.pem"));
        config.mllp.tls_key_file = Some(fixture("localhost-key.pem"));
    })
    .await;
    let pem = std::fs::read(fixture("localhost-cert.pem")).expect("the test certificate");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.expect("a certificate")).expect("a root");
    }
    use rustls::pki_types::pem::PemObject as _;
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = connect(&app).await;
    let mut stream = connector
        .connect("localhost".try_into().expect("a name"), tcp)
        .await
        .expect("a TLS session");
    let ack = exchange(
        &mut stream,
        &[adt("A01", "TLS-1", "TLS100", "Shannon", "Claude").as_bytes()],
    )
    .await;
    assert_eq!(msa(&ack[0]), ("AA".to_owned(), "TLS-1".to_owned()));
    assert_eq!(patients_with(&app, "TLS100").await.len(), 1);

    // plain MLLP on the TLS port gets no ACK
    let mut plain = connect(&app).await;
    plain
        .write_all(&frame(adt("A01", "TLS-2", "TLS200", "X", "Y").as_bytes()))
        .await
        .expect("write");
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), plain.read(&mut buffer)).await;
    assert!(
        !matches!(read, Ok(Ok(n)) if n > 0 && buffer[..n].contains(&0x0b)),
        "no MLLP answer in the clear"
    );
    assert!(patients_with(&app, "TLS200").await.is_empty());
});

on_both!(
    sending_facilities_outside_the_allowlist_are_refused,
    |db| async move {
        let app = spawn_app_with(db, |config| {
            config.mllp.enabled = true;
            config.mllp.port = 0;
            config.mllp.allowed_facilities = vec!["NORTH".to_owned()];
        })
        .await;
        let mut stream = connect(&app).await;
        let allowed = adt("A01", "FAC-1", "FAC100", "A", "B");
        let other =
            adt("A01", "FAC-2", "FAC200", "A", "B").replace("|ADT1|NORTH|", "|ADT1|ELSEWHERE|");
        let acks = exchange(&mut stream, &[allowed.as_bytes(), other.as_bytes()]).await;
        assert_eq!(msa(&acks[0]).0, "AA");
        assert_eq!(msa(&acks[1]).0, "AR");
        assert!(acks[1].contains("ELSEWHERE"), "{:?}", acks[1]);
        assert!(patients_with(&app, "FAC200").await.is_empty());
    }
);

on_both!(
    an_oversized_message_is_refused_and_the_connection_closed,
    |db| async move {
        let app = spawn_app_with(db, |config| {
            config.mllp.enabled = true;
            config.mllp.port = 0;
            config.mllp.max_message_bytes = 2048;
        })
        .await;
        let mut stream = connect(&app).await;
        let mut big = adt("A01", "BIG-1", "BIG100", "A", "B");
        big.push_str(&format!("NTE|1||{}\r", "x".repeat(4096)));
        stream
            .write_all(&frame(big.as_bytes()))
            .await
            .expect("write");
        let mut deframer = Deframer::new(1 << 20);
        let ack = read_frame(&mut stream, &mut deframer).await;
        assert_eq!(msa(&ack), ("AR".to_owned(), "BIG-1".to_owned()), "{ack:?}");
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
        assert!(
            matches!(closed, Ok(Ok(_)) | Ok(Err(_))),
            "the connection is closed"
        );
        assert!(patients_with(&app, "BIG100").await.is_empty());
    }
);

async fn post_hl7v2(app: &TestApp, content_type: &str, body: &str) -> reqwest::Response {
    app.client
        .post(app.url("$hl7v2"))
        .header("Content-Type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .expect("POST $hl7v2")
}

on_both!(
    the_hl7v2_operation_applies_a_message_and_answers_with_the_bundle,
    |db| async move {
        let app = spawn_app_with(db, |_| {}).await;
        let message = adt("A01", "OP-1", "OP100", "Hamilton", "Margaret");
        let response = post_hl7v2(&app, "x-application/hl7-v2+er7", &message).await;
        assert_eq!(response.status(), 200);
        assert!(response.headers().get("x-hl7v2-duplicate").is_none());
        let bundle: Value = response.json().await.expect("a Bundle");
        assert_eq!(bundle["type"], "transaction-response");
        let entries = bundle["entry"].as_array().expect("entries");
        assert!(
            entries
                .iter()
                .any(|e| e["resource"]["resourceType"] == "Patient"
                    && e["response"]["status"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("201"))),
            "{bundle}"
        );
        let before = footprint(&app).await;

        // the same message again: the recorded responses, nothing written
        let again = post_hl7v2(&app, "text/plain", &message).await;
        assert_eq!(again.status(), 200);
        assert_eq!(
            again
                .headers()
                .get("x-hl7v2-duplicate")
                .map(|v| v.as_bytes()),
            Some(&b"true"[..])
        );
        let recorded: Value = again.json().await.expect("a Bundle");
        assert_eq!(
            recorded["entry"].as_array().map(Vec::len),
            Some(entries.len())
        );
        assert_eq!(
            recorded["entry"][0]["response"]["location"],
            bundle["entry"][0]["response"]["location"]
        );
        assert_eq!(footprint(&app).await, before);

        // refusals are OperationOutcomes, and write nothing
        for (what, content_type, body, status) in [
            ("not HL7", "text/plain", "just some text".to_owned(), 400),
            (
                "an unsupported type",
                "text/plain",
                adt("A01", "OP-2", "OP200", "A", "B").replace("ADT^A01^ADT_A01", "ZZZ^Z99"),
                400,
            ),
            (
                "no PID-3",
                "text/plain",
                adt("A01", "OP-3", "", "A", "B"),
                422,
            ),
            ("JSON", "application/fhir+json", "{}".to_owned(), 415),
        ] {
            let response = post_hl7v2(&app, content_type, &body).await;
            assert_eq!(response.status(), status, "{what}");
            let outcome: Value = response.json().await.expect("an OperationOutcome");
            assert_eq!(outcome["resourceType"], "OperationOutcome", "{what}");
            assert!(
                outcome["issue"][0]["diagnostics"]
                    .as_str()
                    .is_some_and(|d| d.len() > 10),
                "{what}: {outcome}"
            );
            assert_eq!(footprint(&app).await, before, "{what}");
        }
    }
);

on_both!(
    the_hl7v2_operation_needs_write_scopes_for_what_it_writes,
    |db| async move {
        let keys = tempfile::tempdir().expect("temporary directory");
        let key_file = keys.path().join("signing.pem");
        gateway::auth::keys::generate_key_file(&key_file).expect("a key");
        let key = gateway::auth::keys::SigningKey::load(&key_file).expect("the key");
        let app = spawn_app_with(db, |config| {
            config.auth.required = true;
            config.auth.signing_key_file = Some(key_file.clone());
        })
        .await;
        let token = |scope: &str| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_secs() as i64;
            key.sign(&serde_json::json!({
                "iss": app.base, "aud": app.base, "sub": "feed", "client_id": "feed",
                "scope": scope, "iat": now, "nbf": now, "exp": now + 300,
                "jti": uuid::Uuid::new_v4().to_string(),
            }))
            .expect("signed")
        };
        let message = adt("A01", "SC-1", "SC100", "Liskov", "Barbara");
        let post = |token: Option<String>| {
            let mut request = app
                .client
                .post(app.url("$hl7v2"))
                .header("Content-Type", "text/plain")
                .body(message.clone());
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            request.send()
        };
        let before = footprint(&app).await;
        assert_eq!(post(None).await.expect("sent").status(), 401);
        let read_only = post(Some(token("system/*.rs"))).await.expect("sent");
        assert_eq!(read_only.status(), 403);
        assert_eq!(
            footprint(&app).await,
            before,
            "nothing written without write scopes"
        );
        let writer = post(Some(token("system/*.cus"))).await.expect("sent");
        assert_eq!(writer.status(), 200, "{:?}", writer.text().await);
        assert_eq!(footprint(&app).await.2, before.2 + 1);
    }
);

on_both!(
    an_a40_links_the_patients_and_moves_the_merged_ones_resources,
    |db| async move {
        // audited: the records of the reads below refer to the merged patient, and stay so
        let app = spawn_app_with(db, |config| {
            config.mllp.enabled = true;
            config.mllp.port = 0;
            config.audit.enabled = true;
        })
        .await;
        let mut stream = connect(&app).await;
        // two records of one person, each with an encounter
        let old = adt("A01", "MRG-0", "MOLD", "Merged", "Sam");
        let new = adt("A01", "MRG-1", "MNEW", "Survivor", "Sam");
        let merge = "MSH|^~\\&|ADT1|NORTH|GATEWAY|HOSP|20260101120000||ADT^A40^ADT_A39|MRG-2|P|2.5.1\r\
                 EVN|A40|20260101120000\r\
                 PID|1||MNEW^^^HOSP^MR||Survivor^Sam||19800101|F\r\
                 MRG|MOLD^^^HOSP^MR\r";
        let acks = exchange(&mut stream, &[old.as_bytes(), new.as_bytes()]).await;
        assert!(acks.iter().all(|ack| msa(ack).0 == "AA"), "{acks:?}");
        let old_id = patients_with(&app, "MOLD").await[0]["id"]
            .as_str()
            .expect("an id")
            .to_owned();
        let new_id = patients_with(&app, "MNEW").await[0]["id"]
            .as_str()
            .expect("an id")
            .to_owned();
        let encounters_of = |id: String| {
            let app = &app;
            async move {
                let bundle: Value = app
                    .client
                    .get(app.url(&format!("Encounter?subject=Patient/{id}")))
                    .send()
                    .await
                    .expect("search")
                    .json()
                    .await
                    .expect("a Bundle");
                bundle["entry"].as_array().map(Vec::len).unwrap_or(0)
            }
        };
        let old_encounters = encounters_of(old_id.clone()).await;
        assert!(
            old_encounters >= 1,
            "the merged patient has an encounter to move"
        );
        let leaves_before = count(&app, "log_leaf").await;

        let ack = exchange(&mut stream, &[merge.as_bytes()]).await.remove(0);
        assert_eq!(msa(&ack), ("AA".to_owned(), "MRG-2".to_owned()), "{ack:?}");
        assert_eq!(
            encounters_of(old_id.clone()).await,
            0,
            "nothing refers to the merged patient"
        );
        assert_eq!(encounters_of(new_id.clone()).await, 1 + old_encounters);
        // each moved resource is a new version, logged
        assert!(count(&app, "log_leaf").await >= leaves_before + old_encounters as i64 + 2);
        let merged: Value = app
            .client
            .get(app.url(&format!("Patient/{old_id}")))
            .send()
            .await
            .expect("read")
            .json()
            .await
            .expect("the merged Patient");
        assert_eq!(merged["link"][0]["type"], "replaced-by", "{merged}");
        assert_eq!(
            merged["link"][0]["other"]["reference"],
            format!("Patient/{new_id}")
        );
        let survivor = &patients_with(&app, "MNEW").await[0];
        assert_eq!(survivor["link"][0]["type"], "replaces", "{survivor}");
        let records = search(&app, &format!("AuditEvent?patient={old_id}")).await;
        assert!(
            !records.is_empty() && records.iter().all(|r| r["meta"]["versionId"] == "1"),
            "the reads of the merged patient's record stay recorded as they were: {records:?}"
        );
    }
);

on_both!(
    an_in1_is_stored_as_one_coverage_of_the_patient,
    |db| async move {
        let app = app_with_mllp(db).await;
        let with_insurance = |event: &str, control_id: &str, plan_end: &str| {
            format!(
                "{}IN1|1|BAV^Blue Advantage HMO^L|BCBS-1^^^NAIC|Blue Cross of Texas|||||||\
                 |20240101|{plan_end}||HMO^health maintenance organization policy||SEL^Self^HL70063\r",
                adt(event, control_id, "COV100", "Payne", "Ada")
            )
        };
        let mut stream = connect(&app).await;
        let first = with_insurance("A04", "COV-1", "20241231");
        let ack = exchange(&mut stream, &[first.as_bytes()]).await.remove(0);
        assert_eq!(msa(&ack).0, "AA", "{ack:?}");
        let patient = patients_with(&app, "COV100").await.remove(0);
        let patient_id = patient["id"].as_str().expect("an id").to_owned();
        let coverages = search(&app, "Coverage").await;
        assert_eq!(coverages.len(), 1, "{coverages:?}");
        let coverage = &coverages[0];
        assert_eq!(coverage["status"], "active");
        assert_eq!(
            coverage["beneficiary"]["reference"],
            format!("Patient/{patient_id}")
        );
        assert_eq!(coverage["payor"][0]["display"], "Blue Cross of Texas");
        assert_eq!(coverage["period"]["end"], "2024-12-31");

        // the same message again: acknowledged, nothing written
        let before = footprint(&app).await;
        let ack = exchange(&mut stream, &[first.as_bytes()]).await.remove(0);
        assert_eq!(msa(&ack).0, "AA", "{ack:?}");
        assert_eq!(footprint(&app).await, before);
        // the insurance again in an A08 (another control id), the plan now ending later: the
        // same Coverage, updated
        let update = with_insurance("A08", "COV-2", "20251231");
        let ack = exchange(&mut stream, &[update.as_bytes()]).await.remove(0);
        assert_eq!(msa(&ack).0, "AA", "{ack:?}");
        let coverages = search(&app, &format!("Coverage?beneficiary=Patient/{patient_id}")).await;
        assert_eq!(coverages.len(), 1, "not duplicated: {coverages:?}");
        assert_eq!(coverages[0]["id"], coverage["id"]);
        assert_eq!(coverages[0]["meta"]["versionId"], "2");
        assert_eq!(coverages[0]["period"]["end"], "2025-12-31");
        assert_eq!(search(&app, "Coverage").await.len(), 1);
    }
);

on_both!(
    every_mllp_message_is_audited_before_its_ack,
    |db| async move {
        let app = spawn_app_with(db, |config| {
            config.mllp.enabled = true;
            config.mllp.port = 0;
            config.audit.enabled = true;
        })
        .await;
        let mut stream = connect(&app).await;
        let applied = adt("A01", "AUD1", "MRN-AUD", "Audit", "Ann");
        let refused = adt("A01", "", "MRN-AUD2", "Audit", "Bob");
        let acks = exchange(&mut stream, &[applied.as_bytes(), refused.as_bytes()]).await;
        assert_eq!(msa(&acks[0]).0, "AA", "{}", acks[0]);
        assert_eq!(msa(&acks[1]).0, "AR", "{}", acks[1]);
        // the records were committed before the ACKs went out
        let events = search(
            &app,
            "AuditEvent?subtype=http://terminology.hl7.org/CodeSystem/v2-0003|A01&_sort=_lastUpdated",
        )
        .await;
        assert_eq!(events.len(), 2, "{events:?}");
        let patient = patients_with(&app, "MRN-AUD").await;
        let patient_id = patient[0]["id"].as_str().expect("an id");
        let (accepted, rejected) = (&events[0], &events[1]);
        assert_eq!(accepted["outcome"], "0");
        assert_eq!(accepted["type"]["code"], "110107");
        assert_eq!(accepted["agent"][0]["who"]["identifier"]["value"], "mllp");
        let references: Vec<&str> = accepted["entity"]
            .as_array()
            .expect("entities")
            .iter()
            .filter_map(|e| e["what"]["reference"].as_str())
            .collect();
        assert!(
            references.contains(&format!("Patient/{patient_id}/_history/1").as_str()),
            "{accepted}"
        );
        assert!(
            references.contains(&format!("Patient/{patient_id}").as_str()),
            "{accepted}"
        );
        assert_eq!(rejected["outcome"], "4");
        assert!(
            rejected["outcomeDesc"]
                .as_str()
                .expect("why")
                .contains("MSH-10"),
            "{rejected}"
        );
    }
);
