//! SMART `system/` scopes, v1 (`system/Observation.read`) and v2 (`system/Observation.rs`,
//! `system/*.cruds`), and narrowing a request to what a client is allowed.
//!
//! v2 search-parameter restrictions (`system/Observation.rs?category=laboratory`) and
//! `patient/` and `user/` scopes are not understood yet: a client cannot be registered with
//! them, and a request for them is narrowed away.

use std::fmt;

use crate::model::ResourceType;

/// The five SMART v2 permissions, in the order v2 writes them.
const PERMISSIONS: [char; 5] = ['c', 'r', 'u', 'd', 's'];

/// One `system/` scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// `None` for `*`.
    resource_type: Option<String>,
    /// Which of c, r, u, d, s (bit i is `PERMISSIONS[i]`).
    permissions: u8,
    /// As it was written (a granted scope that needs no narrowing is returned unchanged).
    text: String,
}

impl Scope {
    /// Parses `system/Type.permissions` (v1 `read`, `write`, `*`; v2 `cruds` in that order).
    pub fn parse(text: &str) -> Result<Scope, String> {
        let rest = text
            .strip_prefix("system/")
            .ok_or_else(|| format!("{text:?} is not a system/ scope"))?;
        if rest.contains('?') {
            return Err(format!(
                "{text:?}: search-parameter restrictions in scopes are not supported yet"
            ));
        }
        let (resource_type, permissions) = rest
            .split_once('.')
            .ok_or_else(|| format!("{text:?} is not system/Type.permissions"))?;
        let resource_type = match resource_type {
            "*" => None,
            name => Some(
                ResourceType::parse(name)
                    .map_err(|_| format!("{text:?}: {name:?} is not a FHIR resource type"))?
                    .to_string(),
            ),
        };
        let permissions = match permissions {
            "read" => bits("rs"),
            "write" => bits("cud"),
            "*" => bits("cruds"),
            v2 if is_v2(v2) => bits(v2),
            _ => {
                return Err(format!(
                    "{text:?}: the permissions must be read, write, * or some of cruds in that order"
                ));
            }
        };
        Ok(Scope {
            resource_type,
            permissions,
            text: text.to_owned(),
        })
    }

    /// What of `self` (requested) `allowed` grants, if anything: `self` as written when
    /// `allowed` covers it all, else the narrower scope in v2 syntax.
    fn within(&self, allowed: &Scope) -> Option<Scope> {
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
        if resource_type == self.resource_type && permissions == self.permissions {
            return Some(self.clone());
        }
        let letters: String = PERMISSIONS
            .iter()
            .enumerate()
            .filter(|(i, _)| permissions & (1 << i) != 0)
            .map(|(_, c)| *c)
            .collect();
        Some(Scope {
            text: format!(
                "system/{}.{letters}",
                resource_type.as_deref().unwrap_or("*")
            ),
            resource_type,
            permissions,
        })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
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

/// Parses a space-separated list of `system/` scopes (a client's allowed scopes).
pub fn parse_list(text: &str) -> Result<Vec<Scope>, String> {
    text.split_whitespace().map(Scope::parse).collect()
}

/// The scopes granted for a `requested` space-separated list: each requested `system/` scope
/// narrowed to what `allowed` permits; scopes this server does not grant are dropped. Empty
/// when nothing could be granted.
pub fn narrow(requested: &str, allowed: &[Scope]) -> Vec<String> {
    let mut granted: Vec<String> = Vec::new();
    for text in requested.split_whitespace() {
        let Ok(scope) = Scope::parse(text) else {
            continue;
        };
        let grants: Vec<Scope> = allowed.iter().filter_map(|a| scope.within(a)).collect();
        // requested as written when some allowed scope covers it all
        let whole = grants.iter().find(|g| g.text == scope.text);
        let grants = match whole {
            Some(whole) => vec![whole.to_string()],
            None => grants.iter().map(Scope::to_string).collect(),
        };
        for grant in grants {
            if !granted.contains(&grant) {
                granted.push(grant);
            }
        }
    }
    granted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(text: &str) -> Vec<Scope> {
        parse_list(text).expect("valid scopes")
    }

    #[test]
    fn v1_and_v2_scopes_parse() {
        for ok in [
            "system/Observation.read",
            "system/Observation.write",
            "system/*.*",
            "system/Observation.rs",
            "system/*.cruds",
            "system/Patient.c",
        ] {
            assert!(Scope::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "patient/Observation.rs",
            "system/Observation.sr",
            "system/Observation.rr",
            "system/Observation.",
            "system/Observation",
            "system/Nope.rs",
            "system/Observation.rs?category=laboratory",
            "openid",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_request_within_the_allowed_scopes_is_granted_as_written() {
        let allowed = allowed("system/*.rs system/Observation.cruds");
        assert_eq!(
            narrow("system/Observation.read system/Patient.rs", &allowed),
            ["system/Observation.read", "system/Patient.rs"]
        );
        assert_eq!(
            narrow("system/*.cruds", &self::allowed("system/*.*")),
            ["system/*.cruds"]
        );
    }

    #[test]
    fn a_request_beyond_the_allowed_scopes_is_narrowed() {
        let allowed = allowed("system/*.rs");
        assert_eq!(
            narrow("system/Observation.cruds", &allowed),
            ["system/Observation.rs"]
        );
        assert_eq!(
            narrow("system/Observation.*", &allowed),
            ["system/Observation.rs"]
        );
        assert_eq!(
            narrow(
                "system/*.cruds",
                &self::allowed("system/Patient.r system/Observation.rs")
            ),
            ["system/Patient.r", "system/Observation.rs"]
        );
        assert!(narrow("system/Observation.write", &allowed).is_empty());
        assert!(narrow("patient/Observation.rs openid launch", &allowed).is_empty());
        assert_eq!(
            narrow("system/Patient.r patient/*.rs", &allowed),
            ["system/Patient.r"],
            "what cannot be granted is dropped"
        );
    }
}
