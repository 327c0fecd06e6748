//! Types that parse: a handler never carries a raw string for a resource type, an id or
//! a version. Each is built by a `parse` that rejects what FHIR does not allow.

use std::fmt;

use fhir_profiles::Definitions;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::Error;

/// A concrete FHIR R4 resource type (`Patient`, `Observation`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType(String);

impl ResourceType {
    pub fn parse(text: &str) -> Result<Self, Error> {
        if Definitions::r4().is_resource_type(text) {
            Ok(ResourceType(text.to_owned()))
        } else {
            Err(Error::UnknownResourceType(text.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A logical id: 1 to 64 of `A-Z a-z 0-9 - .` (R4 `id`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId(String);

impl ResourceId {
    pub fn parse(text: &str) -> Result<Self, Error> {
        let valid = !text.is_empty()
            && text.len() <= 64
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if valid {
            Ok(ResourceId(text.to_owned()))
        } else {
            Err(Error::Invalid(format!(
                "{text:?} is not a valid resource id (1 to 64 of A-Z, a-z, 0-9, '-', '.')"
            )))
        }
    }

    /// A new server-assigned id.
    pub fn generate() -> Self {
        ResourceId(uuid::Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A version of a resource. The gateway numbers versions 1, 2, 3, ... per resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionId(i64);

impl VersionId {
    pub const FIRST: VersionId = VersionId(1);

    pub fn parse(text: &str) -> Result<Self, Error> {
        match text.parse::<i64>() {
            Ok(n) if n >= 1 && !text.starts_with('+') => Ok(VersionId(n)),
            _ => Err(Error::Invalid(format!(
                "{text:?} is not a version id of this server (a positive integer)"
            ))),
        }
    }

    /// The version named by an ETag (`W/"3"` or `"3"`), as sent in `If-Match`.
    pub fn from_etag(etag: &str) -> Result<Self, Error> {
        let inner = etag.trim().trim_start_matches("W/").trim_matches('"');
        VersionId::parse(inner).map_err(|_| {
            Error::Invalid(format!("{etag:?} is not an ETag of this server (W/\"n\")"))
        })
    }

    pub fn from_db(n: i64) -> Self {
        VersionId(n)
    }

    pub fn get(self) -> i64 {
        self.0
    }

    pub fn next(self) -> Self {
        VersionId(self.0 + 1)
    }

    pub fn etag(self) -> String {
        format!("W/\"{}\"", self.0)
    }
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A point in time with millisecond precision, as stored (`last_updated`) and served
/// (`meta.lastUpdated`, `Last-Modified`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instant(i64);

impl Instant {
    pub fn now() -> Self {
        let now = OffsetDateTime::now_utc();
        Instant((now.unix_timestamp_nanos() / 1_000_000) as i64)
    }

    pub fn from_millis(ms: i64) -> Self {
        Instant(ms)
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    fn datetime(self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// FHIR `instant`: `2026-11-24T05:00:00.123Z`.
    pub fn to_fhir(self) -> String {
        let dt = self.datetime();
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            dt.year(),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second(),
            dt.millisecond()
        )
    }

    /// RFC 7231 HTTP-date: `Tue, 24 Nov 2026 05:00:00 GMT`.
    pub fn to_http_date(self) -> String {
        let dt = self.datetime();
        const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        format!(
            "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
            DAYS[dt.weekday().number_days_from_monday() as usize],
            dt.day(),
            MONTHS[usize::from(u8::from(dt.month())) - 1],
            dt.year(),
            dt.hour(),
            dt.minute(),
            dt.second()
        )
    }

    /// Parses an RFC 7231 HTTP-date (`If-Modified-Since`).
    pub fn parse_http_date(text: &str) -> Option<Self> {
        let format = time::macros::format_description!(
            "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
        );
        let dt = time::PrimitiveDateTime::parse(text.trim(), &format)
            .ok()?
            .assume_utc();
        Some(Instant((dt.unix_timestamp_nanos() / 1_000_000) as i64))
    }

    /// Parses a FHIR instant or dateTime with a time zone (`_since`, `_at`).
    pub fn parse_fhir(text: &str) -> Option<Self> {
        let dt = OffsetDateTime::parse(text, &Rfc3339).ok()?;
        Some(Instant((dt.unix_timestamp_nanos() / 1_000_000) as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_what_fhir_allows_and_nothing_else() {
        for good in ["a", "123", "A-b.c", &"x".repeat(64)] {
            assert!(
                ResourceId::parse(good).is_ok(),
                "{good:?} should be a valid id"
            );
        }
        for bad in ["", "a b", "a/b", "é", &"x".repeat(65), "a_b"] {
            assert!(
                ResourceId::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn versions_and_etags() {
        assert_eq!(VersionId::from_etag("W/\"3\"").expect("weak etag").get(), 3);
        assert_eq!(
            VersionId::from_etag("\"12\"").expect("strong etag").get(),
            12
        );
        for bad in ["W/\"0\"", "W/\"x\"", "-1", "+2"] {
            assert!(
                VersionId::from_etag(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn instants_format_and_parse() {
        let t = Instant::from_millis(1_700_000_000_123);
        assert_eq!(t.to_fhir(), "2023-11-14T22:13:20.123Z");
        assert_eq!(t.to_http_date(), "Tue, 14 Nov 2023 22:13:20 GMT");
        assert_eq!(
            Instant::parse_http_date("Tue, 14 Nov 2023 22:13:20 GMT"),
            Some(Instant::from_millis(1_700_000_000_000))
        );
        assert_eq!(Instant::parse_fhir("2023-11-14T22:13:20.123Z"), Some(t));
        assert_eq!(
            Instant::parse_fhir("2023-11-15T00:13:20.123+02:00"),
            Some(t)
        );
    }
}
