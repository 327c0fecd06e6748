//! Independent FHIR clients against the gateway: the Python `fhirpy` client and the R4
//! models of `fhir.resources` (gateway/tests/clients/smoke.py), installed by scripts/test.sh
//! into .cache/venv from gateway/tests/clients/requirements.txt.

use std::path::PathBuf;
use std::process::Command;

use crate::both;
use crate::helpers::TestApp;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

both!(
    python_clients_create_search_page_and_read,
    |app: TestApp| async move {
        let python = workspace().join(".cache/venv/bin/python3");
        assert!(
            python.exists(),
            "{} is missing: scripts/test.sh installs the Python clients (pip install -r gateway/tests/clients/requirements.txt)",
            python.display()
        );
        let script = workspace().join("gateway/tests/clients/smoke.py");
        let base = app.base.clone();
        let output = tokio::task::spawn_blocking(move || {
            Command::new(python).arg(script).arg(base).output()
        })
        .await
        .expect("the smoke test task")
        .expect("python runs");
        assert!(
            output.status.success(),
            "the client smoke test failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // the whole app (and its SQLite directory) lives until the clients are done: using only
        // `app.base` above would move just that field into this block
        drop(app);
    }
);

both!(
    the_smart_python_client_reads_the_oauth_endpoints,
    |app: TestApp| async move {
        let python = workspace().join(".cache/venv/bin/python3");
        assert!(
            python.exists(),
            "{} is missing: scripts/test.sh installs the Python clients",
            python.display()
        );
        let script = workspace().join("gateway/tests/clients/smart_discovery.py");
        let base = app.base.clone();
        let output = tokio::task::spawn_blocking(move || {
            Command::new(python).arg(script).arg(base).output()
        })
        .await
        .expect("the fhirclient task")
        .expect("python runs");
        assert!(
            output.status.success(),
            "fhirclient did not read the oauth-uris:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        drop(app);
    }
);
