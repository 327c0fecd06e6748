//! The claims of the gateway's access tokens: what the token endpoint signs and what every
//! request's verification reads back. One struct for both, so the two cannot drift.

use serde::{Deserialize, Serialize};

/// Who the token's user is, when there is one (`user_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserKind {
    /// A patient, signed in with an Ethereum wallet (Sign-In with Ethereum).
    Patient,
    /// A practitioner, signed in with a password.
    Practitioner,
    /// Other staff (front desk, administrators, auditors), signed in with a password.
    Staff,
}

impl UserKind {
    /// The kind of a stored user (`auth_user.kind`): `patient`, `practitioner`, else staff.
    pub fn of_stored(kind: &str) -> UserKind {
        match kind {
            "patient" => UserKind::Patient,
            "practitioner" => UserKind::Practitioner,
            _ => UserKind::Staff,
        }
    }
}

/// The claims of an access token (a JWT signed by the gateway's key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The authorization server (`[auth] issuer`).
    pub iss: String,
    /// The FHIR base URL the token is for.
    pub aud: String,
    /// The user's id, or the client's for Backend Services.
    pub sub: String,
    /// The client the token was issued to.
    pub client_id: String,
    /// The granted scopes, space-separated.
    pub scope: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    /// Unique per token (for revocation and audit).
    pub jti: String,
    /// The kind of user, absent for Backend Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_kind: Option<UserKind>,
    /// The user's FHIR resource (`Patient/123`, `Practitioner/7`), when known.
    #[serde(default, rename = "fhirUser", skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// The launch patient's id: the compartment `patient/` scopes are confined to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// The launch encounter's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter: Option<String>,
    /// The purpose of use the token was granted for (a v3 ActReason code such as `TREAT`),
    /// when not the default, treatment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose_of_use: Option<String>,
    /// The user may break the glass: read patient data without a consent grant in an
    /// emergency, by naming the purpose of use `ETREAT` on the request (always audited and
    /// flagged). Only users the operator gave that permission get it.
    #[serde(default, rename = "btg", skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
    /// The user is an auditor: may read every AuditEvent, whoever's record it is about,
    /// without a consent grant. Only staff users the operator gave that role get it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auditor: bool,
}
