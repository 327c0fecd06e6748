//! RFC 8785 canonical JSON against the RFC's vectors (tests/data/rfc8785.json) and, for
//! numbers, against an independent formatter over random doubles.

use anchor::{CanonicalError, canonical_json};
use json_syntax::{Parse as _, Value};
use proptest::prelude::*;

#[derive(serde::Deserialize)]
struct Vectors {
    numbers: Vec<NumberVector>,
    non_finite: Vec<String>,
    documents: Vec<DocumentVector>,
}

#[derive(serde::Deserialize)]
struct NumberVector {
    ieee_hex: String,
    expected: String,
}

#[derive(serde::Deserialize)]
struct DocumentVector {
    name: String,
    input: String,
    expected: String,
    expected_hex: Option<String>,
}

fn vectors() -> Vectors {
    serde_json::from_str(include_str!("data/rfc8785.json")).expect("tests/data/rfc8785.json")
}

fn double(ieee_hex: &str) -> f64 {
    f64::from_bits(u64::from_str_radix(ieee_hex, 16).expect("hex bit pattern"))
}

/// A number value whose literal reads back as exactly `value` (Rust prints the shortest
/// literal that does).
fn number(value: f64) -> Value {
    let literal = format!("{value:e}");
    Value::Number(
        json_syntax::NumberBuf::new(literal.as_bytes().into()).expect("a JSON number literal"),
    )
}

fn canonical_text(value: &Value) -> Result<String, CanonicalError> {
    canonical_json(value).map(|bytes| String::from_utf8(bytes).expect("canonical JSON is UTF-8"))
}

#[test]
fn rfc_8785_appendix_b_numbers() {
    for vector in vectors().numbers {
        let value = double(&vector.ieee_hex);
        assert_eq!(
            canonical_text(&number(value)).as_deref(),
            Ok(vector.expected.as_str()),
            "0x{} ({value:e})",
            vector.ieee_hex
        );
    }
}

#[test]
fn numbers_without_a_canonical_form() {
    let vectors = vectors();
    assert_eq!(vectors.non_finite.len(), 3);
    for ieee_hex in vectors.non_finite {
        assert!(!double(&ieee_hex).is_finite(), "0x{ieee_hex}");
    }
    // A JSON literal cannot be NaN; what reaches the canonicalizer is a literal too large.
    for literal in [
        "1e309",
        "-1e309",
        "179769313486231580793728971405303415079934132710037826936173778980444968292764750946649017977587207096330286416692887910946555547851940402630657488671505820681908902000708383676273854845817711531764475730270069855571366959622842914819860834936475292719074168444365510704342711559699508093042880177904174497792",
    ] {
        let (value, _) = Value::parse_str(literal).expect("valid JSON");
        assert_eq!(
            canonical_json(&value),
            Err(CanonicalError::NumberOutOfRange),
            "{literal}"
        );
    }
}

#[test]
fn rfc_8785_and_reference_documents() {
    let vectors = vectors();
    assert!(vectors.documents.len() >= 8);
    for document in vectors.documents {
        let (value, _) = Value::parse_str(&document.input).expect("vector input parses");
        let canonical = canonical_json(&value).expect("vector input is I-JSON");
        assert_eq!(
            String::from_utf8_lossy(&canonical),
            document.expected,
            "{}",
            document.name
        );
        if let Some(expected_hex) = document.expected_hex {
            assert_eq!(hex::encode(&canonical), expected_hex, "{}", document.name);
        }
    }
}

/// ECMAScript's `Number::toString(x)` (ECMA-262, section 6.1.6.1.20) for a finite double,
/// built on Rust's float formatting rather than on `ryu-js`.
fn ecmascript_number_to_string(value: f64) -> String {
    if value == 0.0 {
        return "0".into();
    }
    let (digits, n) = ecmascript_digits(value.abs());
    let k = digits.len() as i32;
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let e = n - 1;
        let sign = if e < 0 { '-' } else { '+' };
        let fraction = if k == 1 {
            String::new()
        } else {
            format!(".{}", &digits[1..])
        };
        format!("{}{fraction}e{sign}{}", &digits[..1], e.abs())
    };
    if value < 0.0 {
        format!("-{body}")
    } else {
        body
    }
}

/// The digits `s` (without trailing zeros) and the exponent `n` of ECMAScript's
/// `Number::toString` for a positive finite double: the fewest digits that read back as the
/// double, and among those the decimal closest to it, the even one on a tie.
///
/// Rust's shortest formatting gives the fewest digits but breaks exact ties upwards
/// (`1424953923781206.25` prints as `...206.3`, ECMAScript says `...206.2`), so the digits
/// are the exact expansion rounded half to even, when that reads back as the double.
fn ecmascript_digits(value: f64) -> (String, i32) {
    let split = |text: String| -> (String, i32) {
        let (mantissa, exponent) = text.split_once('e').expect("an exponent");
        let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
        (digits, exponent.parse::<i32>().expect("exponent") + 1)
    };
    let (shortest, n) = split(format!("{value:e}"));
    // A double's exact decimal expansion has at most 767 significant digits.
    let (exact, exact_n) = split(format!("{value:.766e}"));
    let k = shortest.len();
    let (kept, rest) = exact.split_at(k);
    let rest = rest.trim_end_matches('0');
    let odd = kept
        .bytes()
        .last()
        .is_some_and(|digit| (digit - b'0') % 2 == 1);
    let round_up = match rest.bytes().next() {
        Some(first) if first > b'5' => true,
        Some(b'5') => rest.len() > 1 || odd,
        _ => false,
    };
    let (mut rounded, mut rounded_n) = (kept.as_bytes().to_vec(), exact_n);
    if round_up {
        let mut position = k;
        loop {
            if position == 0 {
                rounded.insert(0, b'1');
                rounded.truncate(k);
                rounded_n += 1;
                break;
            }
            position -= 1;
            if rounded[position] == b'9' {
                rounded[position] = b'0';
            } else {
                rounded[position] += 1;
                break;
            }
        }
    }
    let rounded = String::from_utf8(rounded).expect("digits");
    let reads_back = format!("{rounded}e{}", rounded_n - k as i32).parse::<f64>() == Ok(value);
    let (digits, n) = if reads_back {
        (rounded, rounded_n)
    } else {
        (shortest, n)
    };
    (digits.trim_end_matches('0').to_owned(), n)
}

#[test]
fn the_reference_formatter_agrees_with_appendix_b() {
    for vector in vectors().numbers {
        assert_eq!(
            ecmascript_number_to_string(double(&vector.ieee_hex)),
            vector.expected,
            "0x{}",
            vector.ieee_hex
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    /// Any finite double, whatever its bits (subnormals, huge, tiny, integers).
    #[test]
    fn numbers_match_an_independent_ecmascript_formatter(bits in any::<u64>()) {
        let value = f64::from_bits(bits);
        prop_assume!(value.is_finite());
        prop_assert_eq!(canonical_text(&number(value)), Ok(ecmascript_number_to_string(value)));
    }

    /// Doubles from 2^50 to 2^51 step by a quarter, so `x.25` and `x.75` need 18 digits
    /// exactly and 17 digits tie between two neighbours: ECMAScript picks the even one.
    #[test]
    fn exact_ties_round_to_even(integer in (1u64 << 50)..(1u64 << 51), quarter in prop_oneof![Just(0.25), Just(0.75)]) {
        let value = integer as f64 + quarter;
        prop_assert_eq!(canonical_text(&number(value)), Ok(ecmascript_number_to_string(value)));
    }

    /// Integers and short decimals, the numbers FHIR resources mostly hold.
    #[test]
    fn everyday_numbers_match_too(mantissa in -10_000_000_000i64..10_000_000_000, scale in 0u32..8) {
        let literal = if scale == 0 {
            mantissa.to_string()
        } else {
            format!("{}e-{scale}", mantissa)
        };
        let (value, _) = Value::parse_str(&literal).expect("valid JSON");
        let expected = ecmascript_number_to_string(literal.parse::<f64>().expect("a number"));
        prop_assert_eq!(canonical_text(&value), Ok(expected));
    }
}

/// Random JSON values with unique member names.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Boolean),
        any::<f64>()
            .prop_filter("finite", |value| value.is_finite())
            .prop_map(number),
        any::<String>().prop_map(|text| Value::String(text.as_str().into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6).prop_map(|members| {
                let mut object = json_syntax::Object::new();
                for (name, member) in members {
                    object.push(name.as_str().into(), member);
                }
                Value::Object(object)
            }),
        ]
    })
}

fn reversed(value: &Value) -> Value {
    match value {
        Value::Array(items) => Value::Array(items.iter().map(reversed).collect()),
        Value::Object(object) => {
            let mut out = json_syntax::Object::new();
            for entry in object.iter().rev() {
                out.push(entry.key.clone(), reversed(&entry.value));
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// The canonical form is valid JSON, canonical again when read back, and independent
    /// of member order.
    #[test]
    fn canonical_json_is_a_fixed_point_and_ignores_member_order(value in json_value()) {
        let canonical = canonical_json(&value).expect("unique names, finite numbers");
        let text = std::str::from_utf8(&canonical).expect("UTF-8");
        prop_assert!(serde_json::from_str::<serde_json::Value>(text).is_ok(), "{}", text);
        let (again, _) = Value::parse_str(text).expect("the canonical form parses");
        prop_assert_eq!(canonical_json(&again), Ok(canonical.clone()));
        prop_assert_eq!(canonical_json(&reversed(&value)), Ok(canonical));
    }
}
