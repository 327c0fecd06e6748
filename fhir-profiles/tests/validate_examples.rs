//! Validates every resource of the official R4 examples package (`hl7.fhir.r4.examples@4.0.1`),
//! structurally and against the shipped profiles it (or a resource inside it) claims in
//! `meta.profile`: each must pass, except the few listed in [`KNOWN_INVALID`], which must still
//! fail.
//!
//! The package is read from `$FHIR_R4_EXAMPLES_DIR`, by default
//! `<workspace>/.cache/hl7.fhir.r4.examples/package` (`fhir-profiles/scripts/fetch-examples.sh`
//! fetches it there).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fhir_profiles::Json;
use fhir_profiles::profile::Profiles;
use fhir_profiles::validate::{
    Issue, IssueSeverity, UnknownProfile, validate_profiles, validate_resource,
};
use json_syntax::Parse;

/// Official examples that really are invalid R4, with why. Each must still fail validation,
/// so that a fix of the validator or of the package shows up here.
const KNOWN_INVALID: &[(&str, &str)] = &[
    (
        "ImplementationGuide-fhir.json",
        "lacks the required name and status",
    ),
    (
        "ig-r4.json",
        "a copy of ImplementationGuide-fhir.json: lacks the required name and status",
    ),
    (
        "Questionnaire-qs1.json",
        "nested display items lack the required linkId",
    ),
    (
        "SearchParameter-questionnaireresponse-extensions-QuestionnaireResponse-item-subject.json",
        "its id has 67 characters, more than the 64 an id allows",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-author.json",
        "lacks the required base",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-effective.json",
        "lacks the required base",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-end.json",
        "lacks the required base",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-keyword.json",
        "lacks the required base",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-workflow.json",
        "lacks the required base",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-author.json",
        "lacks the required base",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-effective.json",
        "lacks the required base",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-end.json",
        "lacks the required base",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-keyword.json",
        "lacks the required base",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-workflow.json",
        "lacks the required base",
    ),
];

/// Files of the package that are not resources.
const NOT_RESOURCES: &[&str] = &["package.json", ".index.json"];

fn examples_dir() -> PathBuf {
    match std::env::var_os("FHIR_R4_EXAMPLES_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/hl7.fhir.r4.examples/package")
        }
    }
}

/// The outcome of one example file.
struct Checked {
    file: String,
    bytes: usize,
    /// `None` when the file is not a resource.
    issues: Option<Vec<Issue>>,
    validating: Duration,
    /// For a valid example: what a mutated copy revealed (the validator missing a problem).
    missed: Vec<String>,
    /// How many resources in the file (itself and those inside it) claim a shipped profile.
    shipped_claims: usize,
}

fn check(path: &Path) -> Checked {
    let file = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
    let (resource, _) =
        Json::parse_str(&text).unwrap_or_else(|error| panic!("parsing {file}: {error:?}"));
    let is_resource = resource
        .as_object()
        .and_then(|object| object.get("resourceType").next())
        .and_then(Json::as_str)
        .is_some_and(|name| fhir_profiles::Definitions::r4().is_resource_type(name));
    let started = Instant::now();
    let issues = is_resource.then(|| {
        let mut issues = validate_resource(&resource);
        issues.extend(
            validate_profiles(&resource, UnknownProfile::Warn, None)
                .into_iter()
                .filter(|issue| issue.severity == IssueSeverity::Error),
        );
        issues
    });
    let validating = started.elapsed();
    let missed = match &issues {
        Some(issues) if issues.is_empty() => mutants_fail(&resource),
        _ => Vec::new(),
    };
    Checked {
        file,
        bytes: text.len(),
        issues,
        validating,
        missed,
        shipped_claims: shipped_claims(&resource),
    }
}

/// How many resources in a value claim (in `meta.profile`) a profile that is shipped.
fn shipped_claims(value: &Json) -> usize {
    match value {
        Json::Object(object) => {
            let claims = object
                .get("meta")
                .next()
                .and_then(Json::as_object)
                .and_then(|meta| meta.get("profile").next())
                .and_then(Json::as_array)
                .unwrap_or_default();
            let own = claims
                .iter()
                .filter_map(Json::as_str)
                .any(|claim| Profiles::r4().get(claim).is_some());
            usize::from(own)
                + object
                    .iter()
                    .map(|entry| shipped_claims(&entry.value))
                    .sum::<usize>()
        }
        Json::Array(items) => items.iter().map(shipped_claims).sum(),
        _ => 0,
    }
}

/// Guards against a validator that passes everything: a valid example with an unknown
/// element added to its last object (in document order), or with its last string blanked,
/// must fail with exactly that issue.
fn mutants_fail(resource: &Json) -> Vec<String> {
    let mut missed = Vec::new();

    let mut path = Vec::new();
    let mut with_unknown = resource.clone();
    if last_object_path(&with_unknown, &mut path)
        && let Some(Json::Object(object)) = at_path(&mut with_unknown, &path)
    {
        object.push("notAnElement".into(), Json::Boolean(true));
        let issues = validate_resource(&with_unknown);
        let caught = matches!(issues.as_slice(), [issue] if issue.code == "structure" && issue.expression.ends_with(".notAnElement"));
        if !caught {
            missed.push(format!("an unknown element at {path:?} gave {issues:?}"));
        }
    }

    path.clear();
    let mut with_blank = resource.clone();
    if last_string_path(&with_blank, &mut path)
        && let Some(value) = at_path(&mut with_blank, &path)
    {
        *value = Json::String(" ".into());
        let issues = validate_resource(&with_blank);
        if !matches!(issues.as_slice(), [issue] if issue.code == "value") {
            missed.push(format!("a blank string at {path:?} gave {issues:?}"));
        }
    }
    missed
}

/// The entry/item indexes leading to the last object in document order.
fn last_object_path(value: &Json, path: &mut Vec<usize>) -> bool {
    match value {
        Json::Array(items) => last_path_in(items.iter().enumerate(), path, last_object_path),
        Json::Object(object) => {
            last_path_in(
                object.iter().map(|entry| &entry.value).enumerate(),
                path,
                last_object_path,
            );
            true
        }
        _ => false,
    }
}

/// The entry/item indexes leading to the last string (other than a `resourceType`).
fn last_string_path(value: &Json, path: &mut Vec<usize>) -> bool {
    match value {
        Json::String(_) => true,
        Json::Array(items) => last_path_in(items.iter().enumerate(), path, last_string_path),
        Json::Object(object) => last_path_in(
            object
                .iter()
                .enumerate()
                .filter(|(_, entry)| entry.key.as_str() != "resourceType")
                .map(|(i, entry)| (i, &entry.value)),
            path,
            last_string_path,
        ),
        _ => false,
    }
}

fn last_path_in<'a>(
    children: impl Iterator<Item = (usize, &'a Json)>,
    path: &mut Vec<usize>,
    found: fn(&Json, &mut Vec<usize>) -> bool,
) -> bool {
    let children: Vec<_> = children.collect();
    for (index, child) in children.into_iter().rev() {
        path.push(index);
        if found(child, path) {
            return true;
        }
        path.pop();
    }
    false
}

fn at_path<'a>(value: &'a mut Json, path: &[usize]) -> Option<&'a mut Json> {
    let Some((&first, rest)) = path.split_first() else {
        return Some(value);
    };
    let child = match value {
        Json::Array(items) => items.get_mut(first)?,
        Json::Object(object) => object.iter_mut().nth(first)?.1,
        _ => return None,
    };
    at_path(child, rest)
}

#[test]
fn every_official_r4_example_is_valid_except_the_known_invalid_ones() {
    let dir = examples_dir();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|error| {
        panic!(
            "the R4 examples package is missing at {} ({error}): run fhir-profiles/scripts/fetch-examples.sh \
             or set FHIR_R4_EXAMPLES_DIR",
            dir.display()
        )
    });
    let mut paths: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|path| {
            let name = path
                .file_name()
                .and_then(|name| name.to_str())
                .unwrap_or_default();
            name.ends_with(".json") && !NOT_RESOURCES.contains(&name)
        })
        .collect();
    paths.sort();
    assert!(
        paths.len() > 1000,
        "expected the whole examples package in {}, found {} files",
        dir.display(),
        paths.len()
    );

    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let mut checked: Vec<Checked> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                let paths = &paths;
                scope.spawn(move || {
                    paths
                        .iter()
                        .skip(worker)
                        .step_by(workers)
                        .map(|path| check(path))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("a checking thread does not panic"))
            .collect()
    });
    checked.sort_by(|a, b| a.file.cmp(&b.file));

    let resources: Vec<&Checked> = checked.iter().filter(|c| c.issues.is_some()).collect();
    let bytes: usize = resources.iter().map(|c| c.bytes).sum();
    let validating: Duration = resources.iter().map(|c| c.validating).sum();
    let passed = resources
        .iter()
        .filter(|c| c.issues.as_ref().is_some_and(Vec::is_empty))
        .count();
    let claiming: usize = resources.iter().map(|c| c.shipped_claims).sum();
    println!(
        "{passed} of {} example resources pass ({} files skipped as not resources), \
         {claiming} resources in them claim a shipped profile; \
         validated {:.1} MB in {:.2} s of validation time ({:.1} MB/s per thread)",
        resources.len(),
        checked.len() - resources.len(),
        bytes as f64 / 1e6,
        validating.as_secs_f64(),
        bytes as f64 / 1e6 / validating.as_secs_f64()
    );

    let mut unexpected = Vec::new();
    for example in &resources {
        let issues = example.issues.as_deref().unwrap_or_default();
        let known = KNOWN_INVALID.iter().find(|(file, _)| *file == example.file);
        match (issues.first(), known) {
            (Some(first), None) => {
                println!(
                    "FAIL {} ({} issues): {} [{}] {}",
                    example.file,
                    issues.len(),
                    first.expression,
                    first.code,
                    first.diagnostics
                );
                for issue in issues.iter().skip(1).take(9) {
                    println!(
                        "     {} [{}] {}",
                        issue.expression, issue.code, issue.diagnostics
                    );
                }
                unexpected.push(format!(
                    "{} fails: {} {}",
                    example.file, first.expression, first.diagnostics
                ));
            }
            (Some(first), Some((_, reason))) => {
                println!(
                    "known invalid {} ({reason}): {} {}",
                    example.file, first.expression, first.diagnostics
                );
            }
            (None, Some((_, reason))) => {
                unexpected.push(format!(
                    "{} is listed as invalid ({reason}) but passes",
                    example.file
                ));
            }
            (None, None) => {
                for missed in &example.missed {
                    println!("MISSED in {}: {missed}", example.file);
                    unexpected.push(format!("{}: {missed}", example.file));
                }
            }
        }
    }
    for (file, _) in KNOWN_INVALID {
        if !resources.iter().any(|example| example.file == *file) {
            unexpected.push(format!(
                "{file} is listed as invalid but is not in the package"
            ));
        }
    }
    assert!(
        claiming > 3000,
        "the package's ValueSets, CodeSystems and vital signs claim shipped profiles; found {claiming} claims"
    );
    assert!(
        unexpected.is_empty(),
        "{} unexpected outcomes:\n{}",
        unexpected.len(),
        unexpected.join("\n")
    );
}

/// The vital signs examples claim only `vitalsigns`, but each is an instance of a more
/// specific profile derived from it (`bp`, `bmi`, ...): each must conform to that one too,
/// and must fail it once its vital signs category is taken away.
#[test]
fn the_vital_signs_examples_conform_to_their_specific_profiles() {
    let cases = [
        ("Observation-blood-pressure.json", "bp"),
        ("Observation-blood-pressure-dar.json", "bp"),
        ("Observation-blood-pressure-cancel.json", "bp"),
        ("Observation-bmi.json", "bmi"),
        ("Observation-body-height.json", "bodyheight"),
        ("Observation-body-length.json", "bodyheight"),
        ("Observation-body-temperature.json", "bodytemp"),
        ("Observation-head-circumference.json", "headcircum"),
        ("Observation-heart-rate.json", "heartrate"),
        ("Observation-respiratory-rate.json", "resprate"),
        ("Observation-satO2.json", "oxygensat"),
        ("Observation-vitals-panel.json", "vitalspanel"),
    ];
    let dir = examples_dir();
    for (file, id) in cases {
        let url = format!("http://hl7.org/fhir/StructureDefinition/{id}");
        let profile = Profiles::r4()
            .get(&url)
            .unwrap_or_else(|| panic!("{url} is shipped"));
        let text = std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|error| panic!("reading {file}: {error}"));
        let (mut resource, _) = Json::parse_str(&text).expect("a well-formed example");
        let mut issues = Vec::new();
        profile.check(&resource, "Observation", &mut issues);
        assert!(
            issues.is_empty(),
            "{file} conforms to {id}, found {issues:#?}"
        );
        let removed = resource
            .as_object_mut()
            .and_then(|object| object.remove("category").next());
        assert!(removed.is_some(), "{file} has a category");
        profile.check(&resource, "Observation", &mut issues);
        assert!(
            matches!(issues.as_slice(), [issue] if issue.expression == "Observation.category"),
            "{file} without category fails {id} once, found {issues:#?}"
        );
    }
}

/// Builds a collection Bundle of about 20 MB from the package's clinical examples, checks
/// that it is valid and prints how fast it validates (run with `--release` for real numbers).
#[test]
fn a_large_bundle_of_clinical_resources_validates_quickly() {
    const CLINICAL: &[&str] = &[
        "Patient-",
        "Observation-",
        "Condition-",
        "Encounter-",
        "MedicationRequest-",
        "Procedure-",
        "DiagnosticReport-",
        "AllergyIntolerance-",
        "Immunization-",
    ];
    let dir = examples_dir();
    let mut resources = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|error| {
        panic!(
            "the R4 examples package is missing at {} ({error}): run fhir-profiles/scripts/fetch-examples.sh",
            dir.display()
        )
    }) {
        let path = entry.expect("a readable directory entry").path();
        let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default().to_owned();
        if !CLINICAL.iter().any(|prefix| name.starts_with(prefix)) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("a readable example");
        let (resource, _) = Json::parse_str(&text).expect("a well-formed example");
        if validate_resource(&resource).is_empty() {
            resources.push(resource);
        }
    }
    assert!(
        resources.len() > 100,
        "expected many clinical examples, found {}",
        resources.len()
    );

    let mut entries = Vec::new();
    let mut text_bytes = 0;
    while text_bytes < 20_000_000 {
        for resource in &resources {
            text_bytes += json_syntax::Print::compact_print(resource)
                .to_string()
                .len();
            let mut entry = json_syntax::Object::new();
            entry.push("resource".into(), resource.clone());
            entries.push(Json::Object(entry));
        }
    }
    let entry_count = entries.len();
    let mut bundle = json_syntax::Object::new();
    bundle.push("resourceType".into(), Json::String("Bundle".into()));
    bundle.push("type".into(), Json::String("collection".into()));
    bundle.push("entry".into(), Json::Array(entries));
    let bundle = Json::Object(bundle);
    let text = json_syntax::Print::compact_print(&bundle).to_string();

    let started = Instant::now();
    let reparsed = Json::parse_str(&text).expect("the bundle reparses").0;
    let parsing = started.elapsed();
    let started = Instant::now();
    let issues = validate_resource(&reparsed);
    let validating = started.elapsed();
    assert!(
        issues.is_empty(),
        "the large bundle is valid: {:?}",
        issues.first()
    );
    let started = Instant::now();
    let profile_issues = validate_profiles(&reparsed, UnknownProfile::Warn, None);
    let checking_profiles = started.elapsed();
    assert!(
        profile_issues.is_empty(),
        "the large bundle's resources conform to what they claim: {:?}",
        profile_issues.first()
    );
    println!(
        "a bundle of {entry_count} resources, {:.1} MB compact: validated in {:.3} s \
         ({:.0} resources/s, {:.1} MB/s), profile claims checked in {:.3} s; parsing it took {:.3} s",
        text.len() as f64 / 1e6,
        validating.as_secs_f64(),
        entry_count as f64 / validating.as_secs_f64(),
        text.len() as f64 / 1e6 / validating.as_secs_f64(),
        checking_profiles.as_secs_f64(),
        parsing.as_secs_f64()
    );
}
