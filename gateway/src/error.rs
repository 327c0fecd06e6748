//! The one door for errors: every failure a client can see becomes an HTTP status and a
//! FHIR `OperationOutcome` here, and nowhere else.
//!
//! Server-side failures (5xx) answer with a generic message; their detail goes to the
//! log (without patient data), never to the client.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use fhir_profiles::validate::{Issue, IssueSeverity};
use serde_json::{Value, json};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed: bad JSON, a bad header, a bad parameter value.
    #[error("{0}")]
    Invalid(String),
    /// The resource failed validation; every issue is reported.
    #[error("the resource is not valid ({} issues)", .0.len())]
    InvalidResource(Vec<Issue>),
    /// A patch applied, but its result is not a valid resource; every issue is reported.
    #[error("the patched resource is not valid ({} issues)", .0.len())]
    InvalidPatchResult(Vec<Issue>),
    /// The resource is well-formed but breaks a profile it claims (or that `$validate` was
    /// asked to check); every issue is reported.
    #[error("the resource does not conform to its profiles ({} issues)", .0.len())]
    ProfileViolation(Vec<Issue>),
    /// A search parameter, modifier or feature the server does not support (strict handling).
    #[error("{0}")]
    NotSupported(String),
    #[error("unknown resource type {0:?}")]
    UnknownResourceType(String),
    #[error("{resource_type}/{id} is not known")]
    NotFound { resource_type: String, id: String },
    #[error("{resource_type}/{id} was deleted")]
    Gone { resource_type: String, id: String },
    /// The content of a version was erased (crypto-shredding): it is gone for good.
    #[error("{resource_type}/{id} was erased at {}", .erased_at.to_fhir())]
    Erased {
        resource_type: String,
        id: String,
        erased_at: crate::model::Instant,
    },
    #[error("{0}")]
    Conflict(String),
    /// `If-Match` named a version that is not current, or a conditional request matched
    /// more than one resource.
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("no route for {0}")]
    UnknownRoute(String),
    /// No access token, or one that is not valid (401, with `WWW-Authenticate: Bearer`).
    #[error("{description}")]
    Unauthorized {
        /// The FHIR base URL (the `realm` of the challenge).
        realm: String,
        /// Whether a token was given but is not valid (`error="invalid_token"`).
        invalid_token: bool,
        description: String,
    },
    /// A valid token that does not grant the interaction (403, `error="insufficient_scope"`).
    #[error("{0}")]
    Forbidden(String),
    /// Patient data the token's scopes allow, but no consent on chain covers (403, without a
    /// `WWW-Authenticate` challenge: another token would not help).
    #[error("{0}")]
    NoConsent(String),
    /// The server cannot decide right now, e.g. its view of the chain's consent state is too
    /// old (503 with `Retry-After`: fail closed).
    #[error("{0}")]
    Unavailable(String),
    /// A business rule refused the request (a semantically wrong but well-formed request).
    #[error("{0}")]
    Unprocessable(String),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl Error {
    /// The FHIR `IssueType` code of this error.
    fn issue_code(&self) -> &'static str {
        match self {
            Error::Invalid(_) | Error::InvalidResource(_) | Error::InvalidPatchResult(_) => {
                "invalid"
            }
            Error::ProfileViolation(_) => "processing",
            Error::NotSupported(_) | Error::UnknownResourceType(_) | Error::MethodNotAllowed(_) => {
                "not-supported"
            }
            Error::NotFound { .. } | Error::UnknownRoute(_) => "not-found",
            Error::Gone { .. } | Error::Erased { .. } => "deleted",
            Error::Conflict(_) | Error::PreconditionFailed(_) => "conflict",
            Error::NotAcceptable(_) | Error::UnsupportedMediaType(_) => "not-supported",
            Error::PayloadTooLarge(_) => "too-costly",
            Error::Unprocessable(_) => "processing",
            Error::Unauthorized { .. } => "login",
            Error::Forbidden(_) | Error::NoConsent(_) => "forbidden",
            Error::Unavailable(_) => "transient",
            Error::Database(_) | Error::Internal(_) => "exception",
        }
    }

    /// A conflict with a concurrent transaction, resolved by running the transaction again.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Database(e) if crate::store::is_transient(e))
    }

    fn is_server_error(&self) -> bool {
        matches!(self, Error::Database(_) | Error::Internal(_))
    }

    /// The OperationOutcome describing this error.
    pub fn operation_outcome(&self) -> Value {
        let issues: Vec<Value> = match self {
            Error::InvalidResource(issues)
            | Error::InvalidPatchResult(issues)
            | Error::ProfileViolation(issues) => issues.iter().map(issue_json).collect(),
            _ => {
                let diagnostics = if self.is_server_error() {
                    "the server could not complete the request; the incident is logged".to_owned()
                } else {
                    self.to_string()
                };
                vec![
                    json!({"severity": "error", "code": self.issue_code(), "diagnostics": diagnostics}),
                ]
            }
        };
        json!({"resourceType": "OperationOutcome", "issue": issues})
    }
}

impl Error {
    /// The `WWW-Authenticate` challenge of a 401 or 403 (RFC 6750 §3).
    fn challenge(&self) -> Option<String> {
        // a quoted-string cannot hold a double quote or a backslash unescaped
        let quoted = |text: &str| text.replace(['"', '\\'], "'");
        match self {
            Error::Unauthorized {
                realm,
                invalid_token: false,
                ..
            } => Some(format!("Bearer realm=\"{}\"", quoted(realm))),
            Error::Unauthorized {
                realm,
                invalid_token: true,
                description,
            } => Some(format!(
                "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"{}\"",
                quoted(realm),
                quoted(description)
            )),
            Error::Forbidden(description) => Some(format!(
                "Bearer error=\"insufficient_scope\", error_description=\"{}\"",
                quoted(description)
            )),
            _ => None,
        }
    }
}

fn issue_json(issue: &Issue) -> Value {
    let severity = match issue.severity {
        IssueSeverity::Fatal => "fatal",
        IssueSeverity::Error => "error",
        IssueSeverity::Warning => "warning",
        IssueSeverity::Information => "information",
    };
    let mut value =
        json!({"severity": severity, "code": issue.code, "diagnostics": issue.diagnostics});
    if !issue.expression.is_empty() {
        value["expression"] = json!([issue.expression]);
    }
    value
}

/// An OperationOutcome with a single informational issue (for `Prefer: return=OperationOutcome`
/// and successful deletes).
pub fn information_outcome(diagnostics: &str) -> Value {
    json!({"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational", "diagnostics": diagnostics}]})
}

/// An OperationOutcome for a successful interaction: the issues found on the way (warnings
/// about the resource) followed by `diagnostics` as information.
pub fn success_outcome(diagnostics: &str, issues: &[Issue]) -> Value {
    let mut outcome = information_outcome(diagnostics);
    if !issues.is_empty() {
        let mut all: Vec<Value> = issues.iter().map(issue_json).collect();
        all.push(outcome["issue"][0].take());
        outcome["issue"] = Value::Array(all);
    }
    outcome
}

/// An OperationOutcome listing validation issues that are not errors (or `All OK`).
pub fn validation_outcome(issues: &[Issue]) -> Value {
    if issues.is_empty() {
        return information_outcome("the resource is valid");
    }
    json!({"resourceType": "OperationOutcome", "issue": issues.iter().map(issue_json).collect::<Vec<_>>()})
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Error::Invalid(_) | Error::InvalidResource(_) | Error::NotSupported(_) => {
                StatusCode::BAD_REQUEST
            }
            Error::UnknownResourceType(_) | Error::NotFound { .. } | Error::UnknownRoute(_) => {
                StatusCode::NOT_FOUND
            }
            Error::Gone { .. } | Error::Erased { .. } => StatusCode::GONE,
            Error::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) | Error::NoConsent(_) => StatusCode::FORBIDDEN,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Error::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::Unprocessable(_) | Error::InvalidPatchResult(_) | Error::ProfileViolation(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Error::Database(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if self.is_server_error() {
            let detail = match self {
                Error::Internal(e) => format!("{e:#}"),
                other => format!("{other:?}"),
            };
            tracing::error!(error = %detail, "request failed");
        }
        let mut response = HttpResponse::build(self.status_code());
        if let Some(challenge) = self.challenge() {
            response.insert_header((actix_web::http::header::WWW_AUTHENTICATE, challenge));
        }
        if let Error::Unavailable(_) = self {
            response.insert_header((actix_web::http::header::RETRY_AFTER, "5"));
        }
        let outcome = self.operation_outcome();
        let failure = outcome["issue"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|issue| issue["diagnostics"].as_str())
            .collect::<Vec<_>>()
            .join("; ");
        let mut response = response
            .content_type(crate::rest::format::FHIR_JSON)
            .body(outcome.to_string());
        response
            .extensions_mut()
            .insert(crate::audit::Failure(failure));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_hide_their_detail() {
        let error = Error::Internal(anyhow::anyhow!(
            "connection to 10.0.0.5 refused; patient Smith"
        ));
        let body = error.operation_outcome().to_string();
        assert!(
            !body.contains("Smith") && !body.contains("10.0.0.5"),
            "5xx bodies must not leak detail: {body}"
        );
        assert_eq!(error.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn each_error_maps_to_its_status() {
        let cases: Vec<(Error, u16)> = vec![
            (Error::Invalid("x".into()), 400),
            (Error::UnknownResourceType("Foo".into()), 404),
            (
                Error::NotFound {
                    resource_type: "Patient".into(),
                    id: "1".into(),
                },
                404,
            ),
            (
                Error::Gone {
                    resource_type: "Patient".into(),
                    id: "1".into(),
                },
                410,
            ),
            (
                Error::Erased {
                    resource_type: "Patient".into(),
                    id: "1/_history/1".into(),
                    erased_at: crate::model::Instant::from_millis(0),
                },
                410,
            ),
            (Error::PreconditionFailed("x".into()), 412),
            (Error::NotAcceptable("x".into()), 406),
            (Error::UnsupportedMediaType("x".into()), 415),
            (Error::PayloadTooLarge("x".into()), 413),
            (Error::MethodNotAllowed("x".into()), 405),
            (Error::Unprocessable("x".into()), 422),
            (Error::NoConsent("x".into()), 403),
            (Error::Unavailable("x".into()), 503),
            (Error::InvalidPatchResult(Vec::new()), 422),
            (Error::ProfileViolation(Vec::new()), 422),
        ];
        for (error, status) in cases {
            assert_eq!(
                error.status_code().as_u16(),
                status,
                "{error:?} should answer {status}"
            );
            assert_eq!(
                error.operation_outcome()["resourceType"],
                "OperationOutcome"
            );
        }
    }
}
