//! Runs the index extraction over every resource of the official R4 examples package
//! (`hl7.fhir.r4.examples@4.0.1`), including the resources inside Bundles, and checks a few
//! values known from the examples.
//!
//! The package is read from `$FHIR_R4_EXAMPLES_DIR`, by default
//! `<workspace root>/.cache/hl7.fhir.r4.examples/package` (fetch it with
//! `fhir-profiles/scripts/fetch-examples.sh`).
//!
//! Run `cargo test --release -p fhir-profiles --test index_examples -- --nocapture` for a
//! meaningful throughput figure.

use std::path::PathBuf;
use std::time::Instant;

use fhir_profiles::Json;
use fhir_profiles::compartment::patient_references;
use fhir_profiles::search::{IndexEntry, IndexValue, index_entries};
use fhir_profiles::text::{MAX_WORDS, resource_words};
use json_syntax::Parse;

fn examples_dir() -> PathBuf {
    let dir = std::env::var_os("FHIR_R4_EXAMPLES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(".cache/hl7.fhir.r4.examples/package")
        });
    assert!(
        dir.join("package.json").is_file(),
        "the R4 examples package is missing at {}: run fhir-profiles/scripts/fetch-examples.sh \
         (or set FHIR_R4_EXAMPLES_DIR)",
        dir.display()
    );
    dir
}

/// Every example resource as (file name, resource type, resource); a Bundle's entries follow it.
fn load_examples() -> Vec<(String, String, Json)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .expect("examples directory is readable")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    let mut resources = Vec::new();
    for path in paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&path).expect("example is readable");
        let Ok((json, _)) = Json::parse_str(&text) else {
            panic!("{name}: expected valid JSON")
        };
        let mut found = Vec::new();
        collect_resources(&json, &mut found);
        for resource in found {
            if let Some(resource_type) = resource_type(&resource) {
                resources.push((name.clone(), resource_type, resource));
            }
        }
    }
    resources
}

fn resource_type(json: &Json) -> Option<String> {
    json.as_object()?
        .get("resourceType")
        .next()?
        .as_str()
        .map(str::to_owned)
}

fn collect_resources(json: &Json, out: &mut Vec<Json>) {
    if resource_type(json).is_none() {
        return;
    }
    out.push(json.clone());
    let entries = json
        .as_object()
        .and_then(|o| o.get("entry").next())
        .and_then(Json::as_array)
        .unwrap_or(&[]);
    for entry in entries {
        if let Some(resource) = entry.as_object().and_then(|o| o.get("resource").next()) {
            collect_resources(resource, out);
        }
    }
}

fn entries_of<'e>(entries: &'e [IndexEntry], param: &str) -> impl Iterator<Item = &'e IndexValue> {
    entries
        .iter()
        .filter(move |e| e.param == param)
        .map(|e| &e.value)
}

#[test]
fn indexes_every_official_example() {
    let resources = load_examples();
    assert!(
        resources.len() > 5000,
        "expected the whole examples package, found {} resources",
        resources.len()
    );

    let started = Instant::now();
    let mut total_entries = 0usize;
    for (name, resource_type, resource) in &resources {
        let entries = index_entries(resource_type, resource);
        total_entries += entries.len();
        let _ = name;
    }
    let elapsed = started.elapsed();
    let clinical: Vec<_> = resources
        .iter()
        .filter(|(_, t, _)| {
            !matches!(
                t.as_str(),
                "SearchParameter" | "ValueSet" | "CodeSystem" | "StructureDefinition" | "Bundle"
            )
        })
        .collect();
    let clinical_started = Instant::now();
    let rounds = if cfg!(debug_assertions) { 1 } else { 5 };
    for _ in 0..rounds {
        for (_, resource_type, resource) in &clinical {
            std::hint::black_box(index_entries(resource_type, resource));
        }
    }
    let clinical_elapsed = clinical_started.elapsed();
    eprintln!(
        "indexed {} resources ({} entries) in {:.0} ms: {:.0} resources/s; \
         without conformance resources and Bundles: {:.0} resources/s",
        resources.len(),
        total_entries,
        elapsed.as_secs_f64() * 1000.0,
        resources.len() as f64 / elapsed.as_secs_f64(),
        (clinical.len() * rounds) as f64 / clinical_elapsed.as_secs_f64(),
    );
}

#[test]
fn words_of_every_official_example() {
    let resources = load_examples();
    let started = Instant::now();
    let mut counts: Vec<usize> = resources
        .iter()
        .map(|(_, _, resource)| resource_words(resource).len())
        .collect();
    let elapsed = started.elapsed();
    counts.sort_unstable();
    let at = |fraction: f64| counts[((counts.len() - 1) as f64 * fraction) as usize];
    eprintln!(
        "words of {} resources in {:.0} ms ({:.0} resources/s): mean {:.1}, median {}, p99 {}, {} at the cap of {MAX_WORDS}",
        counts.len(),
        elapsed.as_secs_f64() * 1000.0,
        counts.len() as f64 / elapsed.as_secs_f64(),
        counts.iter().sum::<usize>() as f64 / counts.len() as f64,
        at(0.5),
        at(0.99),
        counts.iter().filter(|n| **n == MAX_WORDS).count(),
    );

    let words_of = |file: &str| {
        let (_, _, resource) = resources
            .iter()
            .find(|(name, _, _)| name == file)
            .unwrap_or_else(|| panic!("expected {file} in the examples package"));
        resource_words(resource)
    };
    let patient = words_of("Patient-example.json");
    let has = |words: &[fhir_profiles::text::Word], word: &str, narrative: bool| {
        words
            .iter()
            .any(|w| w.word == word && w.narrative == narrative)
    };
    assert!(
        has(&patient, "chalmers", true) && has(&patient, "pleasantville", true),
        "Patient/example's narrative names Chalmers of Pleasantville: {patient:?}"
    );
    let condition = words_of("Condition-example.json");
    assert!(
        has(&condition, "severe", true) && has(&condition, "burnt", false),
        "Condition/example: `severe` in the narrative, `burnt` in code.text: {condition:?}"
    );
    assert!(
        !condition.iter().any(|w| w.word == "39065001"),
        "codes are not words"
    );
}

#[test]
fn known_values_of_the_examples() {
    let resources = load_examples();
    let find = |file: &str| {
        resources
            .iter()
            .find(|(name, _, _)| name == file)
            .map(|(_, resource_type, resource)| (resource_type.as_str(), resource))
            .unwrap_or_else(|| panic!("expected {file} in the examples package"))
    };

    let (resource_type, observation) = find("Observation-example.json");
    let entries = index_entries(resource_type, observation);
    assert!(
        entries_of(&entries, "code").any(|v| matches!(v,
            IndexValue::Token { system: Some(s), code: Some(c), .. } if s == "http://loinc.org" && c == "29463-7")),
        "expected Observation/example to have code http://loinc.org|29463-7"
    );
    assert!(
        entries_of(&entries, "value-quantity")
            .any(|v| matches!(v, IndexValue::Quantity { value, code: Some(c), .. } if *value == 185.0 && c == "[lb_av]")),
        "expected Observation/example to have value-quantity 185 [lb_av], got {:?}",
        entries_of(&entries, "value-quantity").collect::<Vec<_>>()
    );
    assert!(
        entries_of(&entries, "patient")
            .any(|v| matches!(v, IndexValue::Reference { target_type: Some(t), target_id: Some(id), .. } if t == "Patient" && id == "example")),
        "expected Observation/example to be about Patient/example"
    );
    assert_eq!(
        patient_references(resource_type, observation),
        ["example"],
        "compartment of Observation/example"
    );

    let (resource_type, patient) = find("Patient-example.json");
    let entries = index_entries(resource_type, patient);
    let families: Vec<&str> = entries_of(&entries, "family")
        .filter_map(|v| match v {
            IndexValue::String { exact, .. } => Some(exact.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        families.contains(&"Chalmers"),
        "expected Patient/example to have family Chalmers, got {families:?}"
    );
    assert!(
        entries_of(&entries, "given")
            .any(|v| matches!(v, IndexValue::String { normalized, .. } if normalized == "peter")),
        "expected Patient/example to have given peter"
    );
    assert!(
        entries_of(&entries, "birthdate").any(|v| matches!(v, IndexValue::Date { .. })),
        "expected Patient/example to have a birthdate"
    );
    assert_eq!(
        patient_references(resource_type, patient),
        ["example"],
        "a Patient is in its own compartment"
    );
}
