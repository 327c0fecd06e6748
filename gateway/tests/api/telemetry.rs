//! OpenTelemetry: no patient data in logs, exported spans or metrics; the caller's
//! `traceparent` continued by the server span; `/metrics` counting requests.
//!
//! Each test installs the process-wide `tracing` subscriber with an OTLP receiver of its own
//! (a small HTTP server below that keeps every export body), so these tests need a process
//! per test, as `cargo nextest` runs them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway::config::Config;
use prost::Message as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::{Db, FHIR_JSON, TestApp, spawn_app_with};

/// What the OTLP receiver got: (path, body) of each export request.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A minimal OTLP/HTTP receiver: answers 200 to every POST and keeps its path and body.
async fn otlp_receiver() -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port for the receiver");
    let endpoint = format!("http://{}", listener.local_addr().expect("its address"));
    let received: Received = Arc::default();
    let keep = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_otlp_connection(stream, keep.clone()));
        }
    });
    (endpoint, received)
}

async fn serve_otlp_connection(mut stream: tokio::net::TcpStream, received: Received) {
    let mut buffer = Vec::new();
    loop {
        // the head, then as many body bytes as Content-Length says
        let head_end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
        let path = head
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let length = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())
                    .flatten()
            })
            .unwrap_or(0);
        while buffer.len() < head_end + length {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buffer[head_end..head_end + length].to_vec();
        buffer.drain(..head_end + length);
        received.lock().expect("received").push((path, body));
        let answer =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if stream.write_all(answer).await.is_err() {
            return;
        }
    }
}

/// Log lines written by the gateway, kept in memory.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("logs")).to_string()
    }
}

/// Telemetry on: OTLP to `endpoint`, `/metrics` served (behind `token`), logs and spans at
/// debug level into `logs`. Returns the handle (to flush) and the settings the app needs.
fn install_telemetry(
    endpoint: &str,
    token: Option<&str>,
    logs: &Logs,
) -> (gateway::telemetry::Telemetry, impl Fn(&mut Config) + use<>) {
    let mut config = Config::default();
    config.log.filter = "debug".to_owned();
    config.log.format = "json".to_owned();
    config.telemetry.otlp_endpoint = Some(endpoint.to_owned());
    config.telemetry.trace_filter = "debug".to_owned();
    config.telemetry.prometheus = true;
    config.telemetry.prometheus_token = token.map(Into::into);
    let writer = logs.clone();
    let telemetry =
        gateway::telemetry::install(&config.log, &config.telemetry, move || writer.clone())
            .expect("telemetry installs");
    let settings = config.telemetry.clone();
    let log = config.log;
    (telemetry, move |config: &mut Config| {
        config.telemetry = settings.clone();
        config.log = log.clone();
    })
}

/// The text of `GET /metrics` (with `token`, if given).
async fn scrape(app: &TestApp, token: Option<&str>) -> reqwest::Response {
    let origin = app.base.trim_end_matches("/fhir");
    let mut request = app.client.get(format!("{origin}/metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("GET /metrics")
}

/// The spans of every trace export received.
fn exported_spans(received: &Received) -> Vec<opentelemetry_proto::tonic::trace::v1::Span> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    received
        .lock()
        .expect("received")
        .iter()
        .filter(|(path, _)| path == "/v1/traces")
        .flat_map(|(_, body)| {
            ExportTraceServiceRequest::decode(body.as_slice())
                .expect("an OTLP trace export in protobuf")
                .resource_spans
        })
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .collect()
}

/// Patient data that must never leave in telemetry: names, identifiers, birth dates (in the
/// spellings FHIR and HL7 v2 give them).
const PATIENT_DATA: [&str; 11] = [
    "Zebulonovich",
    "Quintessa",
    "MRN-7Q4Z9X",
    "1937-04-19",
    "19370419",
    "Xanthippe",
    "Ottoline",
    "HL7MRN-99Q8",
    "19420317",
    "1942-03-17",
    "Kwiatkowska-Ruiz",
];

crate::on_both!(
    no_patient_data_reaches_logs_spans_or_metrics,
    |db: Db| async move {
        let (endpoint, received) = otlp_receiver().await;
        let logs = Logs::default();
        let (telemetry, settings) = install_telemetry(&endpoint, None, &logs);
        let app = spawn_app_with(db, |config| {
            settings(config);
            config.mllp.enabled = true;
            config.mllp.port = 0;
        })
        .await;

        // REST: create, read, search by each kind of patient data, update, patch, history
        let patient = json!({
            "resourceType": "Patient",
            "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "MRN-7Q4Z9X"}],
            "name": [{"family": "Zebulonovich", "given": ["Quintessa"]}],
            "birthDate": "1937-04-19",
            "gender": "female",
        });
        let id = app.create(&patient).await;
        let observation = json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": format!("Patient/{id}"), "display": "Quintessa Zebulonovich"},
            "valueQuantity": {"value": 72, "unit": "/min"},
            "note": [{"text": "Quintessa Zebulonovich, born 1937-04-19, MRN-7Q4Z9X"}],
        });
        app.create(&observation).await;
        let include = format!("Observation?subject=Patient/{id}&_include=Observation:subject");
        for query in [
            "Patient?family=Zebulonovich",
            "Patient?name=Quintessa",
            "Patient?identifier=MRN-7Q4Z9X",
            "Patient?birthdate=1937-04-19",
            include.as_str(),
        ] {
            let (status, bundle) = app.get_json(query).await;
            assert_eq!(status, 200, "{query}: {bundle}");
        }
        let (status, _) = app.get_json(&format!("Patient/{id}")).await;
        assert_eq!(status, 200);
        let (status, _) = app.get_json(&format!("Patient/{id}/$everything")).await;
        assert_eq!(status, 200);
        let mut renamed = patient.clone();
        renamed["id"] = json!(id);
        renamed["name"][0]["family"] = json!("Kwiatkowska-Ruiz");
        let (status, body) = app.put(&format!("Patient/{id}"), &renamed).await;
        assert_eq!(status, 200, "{body}");
        let response = app
            .client
            .patch(app.url(&format!("Patient/{id}")))
            .header("content-type", "application/json-patch+json")
            .body(
                json!([{"op": "replace", "path": "/birthDate", "value": "1937-04-19"}]).to_string(),
            )
            .send()
            .await
            .expect("PATCH");
        assert_eq!(response.status(), 200);
        let (status, _) = app.get_json(&format!("Patient/{id}/_history")).await;
        assert_eq!(status, 200);
        // refused requests carry patient data too: the refusal must not log it
        let (status, _) = app
            .post(
                "Patient",
                &json!({"resourceType": "Patient", "name": [{"family": "Zebulonovich"}], "birthDate": "Quintessa"}),
            )
            .await;
        assert!((400..500).contains(&status), "a refused Patient: {status}");
        let (status, _) = app.get_json("Patient/MRN-7Q4Z9X").await;
        assert_eq!(status, 404);

        // HL7 v2, over `$hl7v2` and over MLLP
        let message = |control_id: &str| {
            format!(
                "MSH|^~\\&|ADT1|NORTH|GATEWAY|HOSP|20260101120000||ADT^A01^ADT_A01|{control_id}|P|2.5.1\r\
                 EVN|A01|20260101120000\r\
                 PID|1||HL7MRN-99Q8^^^HOSP^MR||Xanthippe^Ottoline||19420317|F|||1 Main St^^Springfield^IL^62701\r\
                 PV1|1|I|WARD1^101^A\r"
            )
        };
        let response = app
            .client
            .post(app.url("$hl7v2"))
            .header("content-type", "x-application/hl7-v2+er7")
            .body(message("TEL-1"))
            .send()
            .await
            .expect("POST $hl7v2");
        assert_eq!(response.status(), 200);
        let mut stream = tokio::net::TcpStream::connect((
            "127.0.0.1",
            app.mllp_port.expect("the MLLP listener"),
        ))
        .await
        .expect("an MLLP connection");
        let mut frame = vec![0x0b];
        frame.extend_from_slice(message("TEL-2").as_bytes());
        frame.extend_from_slice(&[0x1c, 0x0d]);
        stream.write_all(&frame).await.expect("a message sent");
        let mut ack = Vec::new();
        while !ack.contains(&0x1c) {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk))
                .await
                .expect("an ACK")
                .expect("an ACK read");
            assert!(n > 0, "the connection stays open until the ACK");
            ack.extend_from_slice(&chunk[..n]);
        }
        assert!(String::from_utf8_lossy(&ack).contains("MSA|AA"));

        let metrics = scrape(&app, None).await.text().await.expect("metrics text");
        telemetry.flush();
        let logs = logs.text();
        let received = received.lock().expect("received").clone();

        // the checks can fail: each channel really carried this run's telemetry
        assert!(
            logs.contains("\"trace_id\"") && logs.contains("\"request\""),
            "request logs with trace ids were written"
        );
        assert!(
            received.iter().any(|(path, _)| path == "/v1/traces")
                && received.iter().any(|(path, _)| path == "/v1/metrics"),
            "spans and metrics were exported: {:?}",
            received
                .iter()
                .map(|(p, b)| (p, b.len()))
                .collect::<Vec<_>>()
        );
        assert!(metrics.contains("fhir_hl7v2_messages"), "{metrics}");
        for needle in PATIENT_DATA {
            let lower = needle.to_lowercase();
            if let Some(line) = logs
                .lines()
                .find(|l| l.contains(needle) || l.to_lowercase().contains(&lower))
            {
                panic!("{needle} is in a log line: {line}");
            }
            assert!(
                !metrics.to_lowercase().contains(&lower),
                "{needle} is in /metrics"
            );
            for (path, body) in &received {
                let text = String::from_utf8_lossy(body).to_lowercase();
                assert!(!text.contains(&lower), "{needle} was exported to {path}");
            }
        }
    }
);

crate::on_both!(
    the_server_span_continues_the_callers_trace,
    |db: Db| async move {
        let (endpoint, received) = otlp_receiver().await;
        let logs = Logs::default();
        let (telemetry, settings) = install_telemetry(&endpoint, None, &logs);
        let app = spawn_app_with(db, settings).await;
        let id = app
            .create(&json!({"resourceType": "Patient", "gender": "other"}))
            .await;

        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let parent_id = "00f067aa0ba902b7";
        let response = app
            .client
            .get(app.url(&format!("Patient/{id}")))
            .header("accept", FHIR_JSON)
            .header("traceparent", format!("00-{trace_id}-{parent_id}-01"))
            .send()
            .await
            .expect("GET");
        assert_eq!(response.status(), 200);
        let traceresponse = response
            .headers()
            .get("traceresponse")
            .and_then(|v| v.to_str().ok())
            .expect("a traceresponse header")
            .to_owned();
        assert!(
            traceresponse.starts_with(&format!("00-{trace_id}-")),
            "the response names the caller's trace: {traceresponse}"
        );
        let server_span_id = traceresponse
            .split('-')
            .nth(2)
            .expect("a span id")
            .to_owned();
        assert_ne!(server_span_id, parent_id, "the server span is a new span");
        telemetry.flush();

        let spans = exported_spans(&received);
        let server = spans
            .iter()
            .find(|s| hex(&s.trace_id) == trace_id && s.kind == 2)
            .unwrap_or_else(|| {
                panic!(
                    "a server span in the caller's trace among {:?}",
                    spans.iter().map(|s| &s.name).collect::<Vec<_>>()
                )
            });
        assert_eq!(
            hex(&server.parent_span_id),
            parent_id,
            "its parent is the caller's span"
        );
        assert_eq!(hex(&server.span_id), server_span_id);
        assert_eq!(server.name, "GET /fhir/{type}/{id}");
        let attribute = |name: &str| {
            server
                .attributes
                .iter()
                .find(|a| a.key == name)
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
        };
        assert!(
            attribute("fhir.interaction").is_some_and(|v| v.contains("\"read\"")),
            "{:?}",
            server.attributes
        );
        assert!(attribute("http.response.status_code").is_some_and(|v| v.contains("200")));
        // the database call is a span beneath it, in the same trace
        assert!(
            spans.iter().any(|s| s.name.starts_with("db.")
                && hex(&s.trace_id) == trace_id
                && hex(&s.parent_span_id) == server_span_id),
            "a db span under the server span: {:?}",
            spans
                .iter()
                .map(|s| (&s.name, hex(&s.parent_span_id)))
                .collect::<Vec<_>>()
        );
        // and the request's log line carries the trace id
        let line = logs
            .text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["fields"]["message"] == "request" && l["trace_id"] == trace_id)
            .expect("the request's log line with its trace id");
        assert_eq!(line["span_id"], server_span_id.as_str());
    }
);

crate::on_both!(
    metrics_count_requests_by_interaction_behind_the_token,
    |db: Db| async move {
        let (endpoint, _received) = otlp_receiver().await;
        let logs = Logs::default();
        let (_telemetry, settings) = install_telemetry(&endpoint, Some("s3cret-scrape"), &logs);
        let app = spawn_app_with(db, settings).await;

        let refused = scrape(&app, None).await;
        assert_eq!(refused.status(), 401, "no token, no metrics");
        let outcome: Value = refused.json().await.expect("an OperationOutcome");
        assert_eq!(outcome["resourceType"], "OperationOutcome");
        let refused = scrape(&app, Some("wrong")).await;
        assert_eq!(refused.status(), 401, "a wrong token, no metrics");

        let id = app
            .create(&json!({"resourceType": "Patient", "gender": "other"}))
            .await;
        let reads = |text: &str| -> u64 {
            text.lines()
                .find(|l| {
                    l.starts_with("http_server_request_duration_seconds_count")
                        && l.contains("fhir_interaction=\"read\"")
                        && l.contains("http_response_status_code=\"200\"")
                })
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let before = scrape(&app, Some("s3cret-scrape")).await;
        assert_eq!(before.status(), 200);
        let before = before.text().await.expect("metrics text");
        for _ in 0..3 {
            let (status, _) = app.get_json(&format!("Patient/{id}")).await;
            assert_eq!(status, 200);
        }
        let after = scrape(&app, Some("s3cret-scrape"))
            .await
            .text()
            .await
            .expect("metrics text");
        assert_eq!(
            reads(&after),
            reads(&before) + 3,
            "three reads counted:\n{after}"
        );
        assert!(
            after.lines().any(
                |l| l.starts_with("http_server_request_duration_seconds_count")
                    && l.contains("fhir_interaction=\"create\"")
            ),
            "the create counted:\n{after}"
        );
        assert!(
            after.contains("http_server_request_duration_seconds_bucket"),
            "latency buckets:\n{after}"
        );
    }
);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
