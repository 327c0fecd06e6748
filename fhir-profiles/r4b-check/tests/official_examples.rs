//! The R4B model's opinion on every resource of the official R4 examples package
//! (`hl7.fhir.r4.examples@4.0.1`), next to the R4 validator's: every file where the two do
//! not simply both accept is listed in [`EXPECTED`] with the reason, and must turn out
//! exactly so. The test prints the agreement figures and the cost of the check.
//!
//! The package is read from `$FHIR_R4_EXAMPLES_DIR`, by default
//! `<workspace>/.cache/hl7.fhir.r4.examples/package` (`fhir-profiles/scripts/fetch-examples.sh`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fhir_profiles::Json;
use json_syntax::{Parse, Print};
use r4b_check::{Unchecked, check};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
    /// R4B lacks or reworked the type: not checked, whatever our validator says.
    NotChecked(Unchecked),
    /// Both refuse (the example really is invalid R4; see fhir-profiles' validate_examples).
    BothRefuse,
    /// Our validator refuses, the R4B model accepts.
    OnlyOursRefuses,
    /// Our validator accepts, the R4B model refuses: a warning in the gateway.
    OnlyR4bRefuses,
}

use Expected::{BothRefuse, NotChecked, OnlyOursRefuses};
use Unchecked::{RedefinedInR4b, RemovedInR4b};

/// Every example on which the two do not both accept, with why. There is no
/// `OnlyR4bRefuses`: the one example that was (`Evidence-example.json`, R4B requires
/// `variableDefinition`, which R4's Evidence does not have) led to skipping the types R4B
/// reworked.
const EXPECTED: &[(&str, Expected, &str)] = &[
    (
        "EffectEvidenceSynthesis-example.json",
        NotChecked(RemovedInR4b),
        "R4B removed EffectEvidenceSynthesis",
    ),
    (
        "Evidence-example.json",
        NotChecked(RedefinedInR4b),
        "R4B reworked Evidence; the R4B model refuses this valid R4 example for lacking variableDefinition",
    ),
    (
        "MedicinalProduct-example.json",
        NotChecked(RemovedInR4b),
        "R4B replaced MedicinalProduct with MedicinalProductDefinition",
    ),
    (
        "MedicinalProductAuthorization-example.json",
        NotChecked(RemovedInR4b),
        "R4B removed it (RegulatedAuthorization)",
    ),
    (
        "MedicinalProductContraindication-example.json",
        NotChecked(RemovedInR4b),
        "R4B removed it (ClinicalUseDefinition)",
    ),
    (
        "MedicinalProductIndication-example.json",
        NotChecked(RemovedInR4b),
        "R4B removed it (ClinicalUseDefinition)",
    ),
    (
        "MedicinalProductIngredient-example.json",
        NotChecked(RemovedInR4b),
        "R4B replaced it with Ingredient",
    ),
    (
        "MedicinalProductInteraction-example.json",
        NotChecked(RemovedInR4b),
        "R4B removed it (ClinicalUseDefinition)",
    ),
    (
        "MedicinalProductManufactured-example.json",
        NotChecked(RemovedInR4b),
        "R4B removed it (ManufacturedItemDefinition)",
    ),
    (
        "MedicinalProductPackaged-example.json",
        NotChecked(RemovedInR4b),
        "R4B removed it (PackagedProductDefinition)",
    ),
    (
        "MedicinalProductPharmaceutical-example.json",
        NotChecked(RemovedInR4b),
        "R4B removed it (AdministrableProductDefinition)",
    ),
    (
        "MedicinalProductUndesirableEffect-example.json",
        NotChecked(RemovedInR4b),
        "R4B removed it (ClinicalUseDefinition)",
    ),
    (
        "RiskEvidenceSynthesis-example.json",
        NotChecked(RemovedInR4b),
        "R4B removed RiskEvidenceSynthesis",
    ),
    (
        "SubstanceSpecification-example.json",
        NotChecked(RemovedInR4b),
        "R4B replaced it with SubstanceDefinition",
    ),
    (
        "ImplementationGuide-fhir.json",
        BothRefuse,
        "lacks the required name and status",
    ),
    (
        "ig-r4.json",
        BothRefuse,
        "lacks the required name and status",
    ),
    (
        "Questionnaire-qs1.json",
        BothRefuse,
        "nested display items lack the required linkId",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-author.json",
        BothRefuse,
        "lacks the required base",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-effective.json",
        BothRefuse,
        "lacks the required base",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-end.json",
        BothRefuse,
        "lacks the required base",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-keyword.json",
        BothRefuse,
        "lacks the required base",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-workflow.json",
        BothRefuse,
        "lacks the required base",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-author.json",
        BothRefuse,
        "lacks the required base",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-effective.json",
        BothRefuse,
        "lacks the required base",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-end.json",
        BothRefuse,
        "lacks the required base",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-keyword.json",
        BothRefuse,
        "lacks the required base",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-workflow.json",
        BothRefuse,
        "lacks the required base",
    ),
    (
        "SearchParameter-questionnaireresponse-extensions-QuestionnaireResponse-item-subject.json",
        OnlyOursRefuses,
        "its id has 67 characters, more than an id allows; the R4B model does not check ids",
    ),
];

/// Files of the package that are not resources.
const NOT_RESOURCES: &[&str] = &["package.json", ".index.json"];

fn examples_dir() -> PathBuf {
    match std::env::var_os("FHIR_R4_EXAMPLES_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/hl7.fhir.r4.examples/package")
        }
    }
}

struct Checked {
    file: String,
    /// The compact text, as the gateway hands it to the check.
    bytes: usize,
    ours_refuses: bool,
    report: r4b_check::Report,
    checking: Duration,
}

fn check_file(path: &Path) -> Checked {
    let file = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
    let (resource, _) =
        Json::parse_str(&text).unwrap_or_else(|error| panic!("parsing {file}: {error:?}"));
    let ours_refuses = !fhir_profiles::validate::validate_resource(&resource).is_empty();
    let compact = resource.compact_print().to_string();
    let started = Instant::now();
    let report = check(&compact);
    let checking = started.elapsed();
    Checked {
        file,
        bytes: compact.len(),
        ours_refuses,
        report,
        checking,
    }
}

fn outcome(checked: &Checked) -> Option<Expected> {
    let report = &checked.report;
    match (
        &report.not_checked[..],
        &report.refusal,
        checked.ours_refuses,
    ) {
        ([root], None, _) if !root.expression.contains('.') => Some(NotChecked(root.why)),
        (_, Some(_), true) => Some(BothRefuse),
        (_, None, true) => Some(OnlyOursRefuses),
        (_, Some(_), false) => Some(Expected::OnlyR4bRefuses),
        (_, None, false) => None,
    }
}

#[test]
fn the_r4b_model_agrees_with_the_r4_validator_on_the_official_examples() {
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
        paths.len() > 5000,
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
                        .map(|path| check_file(path))
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

    let mut unexpected = Vec::new();
    let mut counts = [0usize; 5];
    for example in &checked {
        let actual = outcome(example);
        let expected = EXPECTED.iter().find(|(file, _, _)| *file == example.file);
        counts[match actual {
            None => 0,
            Some(NotChecked(_)) => 1,
            Some(BothRefuse) => 2,
            Some(OnlyOursRefuses) => 3,
            Some(Expected::OnlyR4bRefuses) => 4,
        }] += 1;
        if let Some(refusal) = &example.report.refusal {
            println!(
                "R4B refuses {}: {} {}",
                example.file, refusal.expression, refusal.message
            );
        }
        match (actual, expected) {
            (None, None) => {}
            (Some(actual), Some((_, expected, reason))) if actual == *expected => {
                println!("as expected, {actual:?}: {} ({reason})", example.file);
            }
            (actual, expected) => unexpected.push(format!(
                "{}: {actual:?}, expected {:?} ({:?})",
                example.file,
                expected.map(|(_, expected, _)| expected),
                example.report
            )),
        }
    }
    for (file, _, _) in EXPECTED {
        if !checked.iter().any(|example| example.file == *file) {
            unexpected.push(format!("{file} is listed but is not in the package"));
        }
    }

    let accepted: Vec<&Checked> = checked
        .iter()
        .filter(|example| outcome(example).is_none())
        .collect();
    let bytes: usize = accepted.iter().map(|example| example.bytes).sum();
    let checking: Duration = accepted.iter().map(|example| example.checking).sum();
    println!(
        "{} example resources: both accept {}, not checked (type removed or reworked in R4B) {}, \
         both refuse {}, only the R4 validator refuses {}, only the R4B model refuses {}",
        checked.len(),
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        counts[4]
    );
    let mut per_resource: Vec<(Duration, usize)> = accepted
        .iter()
        .map(|example| (example.checking, example.bytes))
        .collect();
    per_resource.sort();
    let (median_time, _) = per_resource[per_resource.len() / 2];
    let mut sizes: Vec<usize> = accepted.iter().map(|example| example.bytes).collect();
    sizes.sort_unstable();
    println!(
        "the R4B check of the {} accepted resources ({:.1} MB compact) took {:.2} s: {:.1} MB/s \
         per thread; median {:.0} µs per resource, median size {:.1} kB ({} build)",
        accepted.len(),
        bytes as f64 / 1e6,
        checking.as_secs_f64(),
        bytes as f64 / 1e6 / checking.as_secs_f64(),
        median_time.as_secs_f64() * 1e6,
        sizes[sizes.len() / 2] as f64 / 1e3,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    assert!(
        unexpected.is_empty(),
        "{} unexpected outcomes:\n{}",
        unexpected.len(),
        unexpected.join("\n")
    );
}
