//! SMART scopes (App Launch 2.2, "Scopes and Launch Context"): resource scopes for the three
//! contexts, `patient/`, `user/` and `system/`, in v1 syntax (`patient/Observation.read`) and
//! v2 syntax (`patient/Observation.rs`, `user/*.cruds`) with v2 search-parameter restrictions
//! (`patient/Observation.rs?category=laboratory`); the other scopes this server grants
//! (`openid`, `fhirUser`, `launch`, `launch/patient`, `launch/encounter`, `offline_access`,
//! `online_access`); narrowing a request to what a client is allowed; and plain words for
//! each, for the approval page.
//!
//! A scope says what a token may do, never more: the rules that apply it to a request (the
//! patient compartment for `patient/` scopes, restrictions as part of the query) live where the
//! request is served.

use std::fmt;

use crate::interaction::search::parse_filter;
use crate::model::ResourceType;
use crate::store::search::Filter;

/// The five SMART v2 permissions, in the order v2 writes them.
const PERMISSIONS: [char; 5] = ['c', 'r', 'u', 'd', 's'];

/// One of the five v2 permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Permission {
    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// Whose data a resource scope reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// The launch patient's compartment (`patient/`).
    Patient,
    /// Whatever the signed-in user may see (`user/`).
    User,
    /// Everything the client is allowed, with no user (`system/`, Backend Services).
    System,
}

impl Context {
    fn as_str(self) -> &'static str {
        match self {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        }
    }
}

/// A resource scope: `context/Type.permissions[?restriction]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceScope {
    pub context: Context,
    /// `None` for `*`.
    pub resource_type: Option<String>,
    /// Which of c, r, u, d, s (bit i is `PERMISSIONS[i]`).
    permissions: u8,
    /// The v2 search-parameter restriction: the query after `?`, as written.
    pub restriction: Option<String>,
    /// As it was written (a granted scope that needs no narrowing is returned unchanged).
    text: String,
}

/// Search parameters that shape a result rather than select resources, which a restriction
/// cannot use.
const RESULT_PARAMETERS: [&str; 14] = [
    "_count",
    "_page",
    "_sort",
    "_total",
    "_include",
    "_revinclude",
    "_summary",
    "_elements",
    "_contained",
    "_containedType",
    "_format",
    "_pretty",
    "_type",
    "_query",
];

impl ResourceScope {
    /// Parses `context/Type.permissions[?restriction]` (v1 `read`, `write`, `*`; v2 some of
    /// `cruds` in that order). A restriction must be v2 and must be search criteria this
    /// server understands for the type.
    pub fn parse(text: &str) -> Result<ResourceScope, String> {
        let (context, rest) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not a resource scope"))?;
        let context = match context {
            "patient" => Context::Patient,
            "user" => Context::User,
            "system" => Context::System,
            _ => {
                return Err(format!(
                    "{text:?} is not a patient/, user/ or system/ scope"
                ));
            }
        };
        let (rest, restriction) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let (resource_type, permissions) = rest
            .split_once('.')
            .ok_or_else(|| format!("{text:?} is not {}/Type.permissions", context.as_str()))?;
        let resource_type = match resource_type {
            "*" => None,
            name => Some(
                ResourceType::parse(name)
                    .map_err(|_| format!("{text:?}: {name:?} is not a FHIR resource type"))?
                    .to_string(),
            ),
        };
        let v1 = match permissions {
            "read" => Some(bits("rs")),
            "write" => Some(bits("cud")),
            "*" => Some(bits("cruds")),
            _ => None,
        };
        let permissions = match v1 {
            Some(_) if restriction.is_some() => {
                return Err(format!(
                    "{text:?}: search-parameter restrictions need v2 permissions (some of cruds)"
                ));
            }
            Some(bits) => bits,
            None if is_v2(permissions) => bits(permissions),
            None => {
                return Err(format!(
                    "{text:?}: the permissions must be read, write, * or some of cruds in that order"
                ));
            }
        };
        let scope = ResourceScope {
            context,
            resource_type,
            permissions,
            restriction: restriction.map(str::to_owned),
            text: text.to_owned(),
        };
        scope.restriction_filters()?;
        Ok(scope)
    }

    /// Whether the scope grants `permission` (on its resource type, within its context and
    /// restriction).
    pub fn allows(&self, permission: Permission) -> bool {
        self.permissions & permission.bit() != 0
    }

    /// Whether the scope covers resources of `resource_type`.
    pub fn covers(&self, resource_type: &str) -> bool {
        self.resource_type
            .as_deref()
            .is_none_or(|t| t == resource_type)
    }

    /// The restriction as search filters on `resource_type` (the scope's type, or any type for
    /// `*`, where only parameters every resource has can be used). Empty without restriction.
    pub fn filters_for(&self, resource_type: &str) -> Result<Vec<Filter>, String> {
        let Some(query) = &self.restriction else {
            return Ok(Vec::new());
        };
        let mut filters = Vec::new();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if RESULT_PARAMETERS.contains(&name.as_ref()) {
                return Err(format!(
                    "{}: {name} shapes a result and cannot restrict a scope",
                    self.text
                ));
            }
            let filter = parse_filter(resource_type, &name, &value)
                .map_err(|e| format!("{}: the restriction {name}={value}: {e}", self.text))?;
            filters.push(filter);
        }
        if filters.is_empty() {
            return Err(format!("{}: the restriction after ? is empty", self.text));
        }
        Ok(filters)
    }

    fn restriction_filters(&self) -> Result<Vec<Filter>, String> {
        self.filters_for(self.resource_type.as_deref().unwrap_or("Resource"))
    }

    /// What of `self` (requested) `allowed` grants, if anything: `self` as written when
    /// `allowed` covers it all, else the narrower scope in v2 syntax (a restriction of either
    /// applies; of both, both).
    fn within(&self, allowed: &ResourceScope) -> Option<ResourceScope> {
        if self.context != allowed.context {
            return None;
        }
        let resource_type = match (&self.resource_type, &allowed.resource_type) {
            (requested, None) => requested.clone(),
            (None, Some(allowed)) => Some(allowed.clone()),
            (Some(requested), Some(allowed)) if requested == allowed => Some(requested.clone()),
            _ => return None,
        };
        let permissions = self.permissions & allowed.permissions;
        if permissions == 0 {
            return None;
        }
        let restriction = match (&self.restriction, &allowed.restriction) {
            (None, None) => None,
            (Some(one), None) | (None, Some(one)) => Some(one.clone()),
            (Some(a), Some(b)) if a == b => Some(a.clone()),
            (Some(a), Some(b)) => Some(format!("{a}&{b}")),
        };
        if resource_type == self.resource_type
            && permissions == self.permissions
            && restriction == self.restriction
        {
            return Some(self.clone());
        }
        let letters: String = PERMISSIONS
            .iter()
            .enumerate()
            .filter(|(i, _)| permissions & (1 << i) != 0)
            .map(|(_, c)| *c)
            .collect();
        let text = format!(
            "{}/{}.{letters}{}",
            self.context.as_str(),
            resource_type.as_deref().unwrap_or("*"),
            restriction
                .as_deref()
                .map(|r| format!("?{r}"))
                .unwrap_or_default()
        );
        // a restriction valid on the allowed type is valid on the narrowed one
        ResourceScope::parse(&text).ok()
    }

    /// The scope in plain words, for the approval page.
    pub fn describe(&self) -> String {
        let verbs: Vec<&str> = [
            (Permission::Read, "read"),
            (Permission::Search, "search"),
            (Permission::Create, "create"),
            (Permission::Update, "change"),
            (Permission::Delete, "delete"),
        ]
        .iter()
        .filter(|(p, _)| self.allows(*p))
        .map(|(_, verb)| *verb)
        .collect();
        let verbs = match verbs.as_slice() {
            [one] => (*one).to_owned(),
            [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
            [] => String::new(),
        };
        let what = match &self.resource_type {
            None => "all kinds of records".to_owned(),
            Some(t) => format!("{} records", plain_type(t)),
        };
        let whose = match self.context {
            Context::Patient => "of the selected patient",
            Context::User => "that you can access",
            Context::System => "of every patient (no user signed in)",
        };
        let mut text = format!("{} {what} {whose}", capitalize(&verbs));
        if let Some(restriction) = &self.restriction {
            let conditions: Vec<String> = form_urlencoded::parse(restriction.as_bytes())
                .map(|(name, value)| format!("{name} is {value}"))
                .collect();
            text.push_str(&format!(", only where {}", conditions.join(" and ")));
        }
        text
    }
}

impl fmt::Display for ResourceScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `MedicationRequest` as "medication request".
fn plain_type(name: &str) -> String {
    let mut words = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            words.push(' ');
        }
        words.extend(c.to_lowercase());
    }
    words
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

fn is_v2(text: &str) -> bool {
    // each of c r u d s at most once, in that order
    let mut rest = PERMISSIONS.iter();
    !text.is_empty() && text.chars().all(|c| rest.any(|p| *p == c))
}

fn bits(letters: &str) -> u8 {
    PERMISSIONS
        .iter()
        .enumerate()
        .filter(|(_, c)| letters.contains(**c))
        .fold(0, |bits, (i, _)| bits | (1 << i))
}

/// The scopes other than resource scopes that this server grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherScope {
    /// OpenID Connect: an `id_token` comes with the access token.
    OpenId,
    /// The `id_token` names the user's FHIR resource (`fhirUser`).
    FhirUser,
    /// EHR launch: the app was launched with a `launch` value.
    Launch,
    /// Standalone launch: the user picks a patient, whose id comes with the token.
    LaunchPatient,
    /// Standalone launch: an encounter comes with the token.
    LaunchEncounter,
    /// A refresh token that outlives the session.
    OfflineAccess,
    /// A refresh token for as long as the user stays signed in.
    OnlineAccess,
}

impl OtherScope {
    const ALL: [OtherScope; 7] = [
        OtherScope::OpenId,
        OtherScope::FhirUser,
        OtherScope::Launch,
        OtherScope::LaunchPatient,
        OtherScope::LaunchEncounter,
        OtherScope::OfflineAccess,
        OtherScope::OnlineAccess,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OtherScope::OpenId => "openid",
            OtherScope::FhirUser => "fhirUser",
            OtherScope::Launch => "launch",
            OtherScope::LaunchPatient => "launch/patient",
            OtherScope::LaunchEncounter => "launch/encounter",
            OtherScope::OfflineAccess => "offline_access",
            OtherScope::OnlineAccess => "online_access",
        }
    }

    fn parse(text: &str) -> Option<OtherScope> {
        OtherScope::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// The scope in plain words, for the approval page.
    pub fn describe(self) -> &'static str {
        match self {
            OtherScope::OpenId => "Confirm that it is you who signed in",
            OtherScope::FhirUser => "Know who you are (your user record)",
            OtherScope::Launch => "Open in the context of your current session",
            OtherScope::LaunchPatient => "Know which patient is selected",
            OtherScope::LaunchEncounter => "Know which encounter is selected",
            OtherScope::OfflineAccess => "Keep access after you sign out, until you revoke it",
            OtherScope::OnlineAccess => "Keep access while you stay signed in",
        }
    }
}

/// A set of scopes: what a client is allowed, what was requested, what was granted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet {
    pub resources: Vec<ResourceScope>,
    pub others: Vec<OtherScope>,
}

impl ScopeSet {
    /// Parses a space-separated list strictly: every scope must be one this server grants
    /// (for a client's registration).
    pub fn parse(text: &str) -> Result<ScopeSet, String> {
        let mut set = ScopeSet::default();
        for scope in text.split_whitespace() {
            match OtherScope::parse(scope) {
                Some(other) => set.add_other(other),
                None => set.add_resource(ResourceScope::parse(scope)?),
            }
        }
        Ok(set)
    }

    /// Parses a space-separated list leniently, leaving out what this server does not grant
    /// (a request: RFC 6749 lets the server grant less than asked).
    pub fn parse_lenient(text: &str) -> ScopeSet {
        let mut set = ScopeSet::default();
        for scope in text.split_whitespace() {
            if let Some(other) = OtherScope::parse(scope) {
                set.add_other(other);
            } else if let Ok(resource) = ResourceScope::parse(scope) {
                set.add_resource(resource);
            }
        }
        set
    }

    fn add_other(&mut self, other: OtherScope) {
        if !self.others.contains(&other) {
            self.others.push(other);
        }
    }

    fn add_resource(&mut self, resource: ResourceScope) {
        if !self.resources.contains(&resource) {
            self.resources.push(resource);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty() && self.others.is_empty()
    }

    pub fn has(&self, other: OtherScope) -> bool {
        self.others.contains(&other)
    }

    /// Whether any resource scope is in `context`.
    pub fn has_context(&self, context: Context) -> bool {
        self.resources.iter().any(|s| s.context == context)
    }

    /// What of the space-separated `requested` scopes this set (allowed) permits: each
    /// resource scope narrowed to what the allowed ones grant, other scopes kept when allowed;
    /// the rest left out.
    pub fn narrow(&self, requested: &str) -> ScopeSet {
        let requested = ScopeSet::parse_lenient(requested);
        let mut granted = ScopeSet::default();
        for other in requested.others {
            if self.has(other) {
                granted.add_other(other);
            }
        }
        for scope in &requested.resources {
            let grants: Vec<ResourceScope> = self
                .resources
                .iter()
                .filter_map(|allowed| scope.within(allowed))
                .collect();
            // as written when some allowed scope covers it all
            match grants.iter().find(|g| g.text == scope.text) {
                Some(whole) => granted.add_resource(whole.clone()),
                None => grants
                    .into_iter()
                    .for_each(|grant| granted.add_resource(grant)),
            }
        }
        granted
    }

    /// Only the scopes of `self` named in `chosen`, by their text (a user's choice on the
    /// approval page among what was granted).
    pub fn keep(&self, chosen: &[&str]) -> ScopeSet {
        ScopeSet {
            resources: self
                .resources
                .iter()
                .filter(|s| chosen.contains(&s.text.as_str()))
                .cloned()
                .collect(),
            others: self
                .others
                .iter()
                .filter(|s| chosen.contains(&s.as_str()))
                .copied()
                .collect(),
        }
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let texts = self
            .others
            .iter()
            .map(|s| s.as_str().to_owned())
            .chain(self.resources.iter().map(ToString::to_string));
        for (i, text) in texts.enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(&text)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(text: &str) -> ScopeSet {
        ScopeSet::parse(text).expect("valid scopes")
    }

    fn narrow(requested: &str, allowed: &str) -> String {
        self::allowed(allowed).narrow(requested).to_string()
    }

    #[test]
    fn v1_and_v2_scopes_parse_in_every_context() {
        for ok in [
            "system/Observation.read",
            "system/Observation.write",
            "system/*.*",
            "system/Observation.rs",
            "system/*.cruds",
            "system/Patient.c",
            "patient/Observation.read",
            "patient/Observation.rs",
            "user/*.cruds",
            "patient/Observation.rs?category=laboratory",
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
            "user/Condition.rs?clinical-status=active&category=problem-list-item",
            "user/*.rs?_lastUpdated=ge2020-01-01",
        ] {
            assert!(ResourceScope::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "system/Observation.sr",
            "system/Observation.rr",
            "system/Observation.",
            "system/Observation",
            "system/Nope.rs",
            "practitioner/Observation.rs",
            "patient/Observation.read?category=laboratory",
            "patient/Observation.rs?nope=1",
            "patient/Observation.rs?_count=1",
            "patient/Observation.rs?",
            "patient/*.rs?category=laboratory",
            "openid",
        ] {
            assert!(ResourceScope::parse(bad).is_err(), "{bad}");
        }
        assert!(ScopeSet::parse("openid fhirUser launch/patient offline_access").is_ok());
        assert!(
            ScopeSet::parse("openid profile").is_err(),
            "profile is not granted"
        );
    }

    #[test]
    fn permissions_and_coverage() {
        let v1 = ResourceScope::parse("patient/Observation.read").expect("valid");
        assert!(v1.allows(Permission::Read) && v1.allows(Permission::Search));
        assert!(!v1.allows(Permission::Create) && !v1.allows(Permission::Delete));
        let write = ResourceScope::parse("user/*.write").expect("valid");
        assert!(write.allows(Permission::Create) && write.allows(Permission::Update));
        assert!(write.allows(Permission::Delete) && !write.allows(Permission::Read));
        assert!(write.covers("Condition") && !v1.covers("Condition") && v1.covers("Observation"));
        let restricted =
            ResourceScope::parse("patient/Observation.rs?category=laboratory").expect("valid");
        assert_eq!(
            restricted.filters_for("Observation").map(|f| f.len()),
            Ok(1)
        );
    }

    #[test]
    fn a_request_within_the_allowed_scopes_is_granted_as_written() {
        assert_eq!(
            narrow(
                "system/Observation.read system/Patient.rs",
                "system/*.rs system/Observation.cruds"
            ),
            "system/Observation.read system/Patient.rs"
        );
        assert_eq!(narrow("system/*.cruds", "system/*.*"), "system/*.cruds");
        assert_eq!(
            narrow(
                "openid fhirUser launch/patient patient/Observation.rs?category=laboratory",
                "openid fhirUser launch/patient offline_access patient/*.rs"
            ),
            "openid fhirUser launch/patient patient/Observation.rs?category=laboratory"
        );
    }

    #[test]
    fn a_request_beyond_the_allowed_scopes_is_narrowed() {
        assert_eq!(
            narrow("system/Observation.cruds", "system/*.rs"),
            "system/Observation.rs"
        );
        assert_eq!(
            narrow("system/Observation.*", "system/*.rs"),
            "system/Observation.rs"
        );
        assert_eq!(
            narrow("system/*.cruds", "system/Patient.r system/Observation.rs"),
            "system/Patient.r system/Observation.rs"
        );
        assert_eq!(narrow("system/Observation.write", "system/*.rs"), "");
        assert_eq!(
            narrow("patient/Observation.rs openid launch", "system/*.rs"),
            "",
            "another context, or scopes the client may not have, are left out"
        );
        assert_eq!(
            narrow("system/Patient.r patient/*.rs", "system/*.rs"),
            "system/Patient.r"
        );
        assert_eq!(
            narrow(
                "patient/Observation.rs",
                "patient/Observation.rs?category=vital-signs"
            ),
            "patient/Observation.rs?category=vital-signs",
            "the allowed restriction applies"
        );
        assert_eq!(
            narrow(
                "patient/Observation.cruds?category=laboratory",
                "patient/Observation.rs?status=final"
            ),
            "patient/Observation.rs?category=laboratory&status=final",
            "both restrictions apply"
        );
        assert_eq!(narrow("offline_access", "online_access"), "");
    }

    #[test]
    fn a_user_keeps_only_what_they_chose() {
        let requested =
            allowed("openid offline_access patient/Observation.rs patient/Condition.rs");
        assert_eq!(
            requested
                .keep(&["openid", "patient/Condition.rs", "patient/Immunization.rs"])
                .to_string(),
            "openid patient/Condition.rs"
        );
    }

    #[test]
    fn scopes_read_in_plain_words() {
        let describe = |s: &str| ResourceScope::parse(s).expect("valid").describe();
        assert_eq!(
            describe("patient/Observation.rs?category=laboratory"),
            "Read and search observation records of the selected patient, only where category is laboratory"
        );
        assert_eq!(
            describe("user/MedicationRequest.cruds"),
            "Read, search, create, change and delete medication request records that you can access"
        );
        assert_eq!(
            describe("system/*.read"),
            "Read and search all kinds of records of every patient (no user signed in)"
        );
    }
}
