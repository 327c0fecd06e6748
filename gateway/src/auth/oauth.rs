//! OAuth 2.0 plumbing shared by the authorization server's endpoints: the error response
//! (RFC 6749 §5.2) and form bodies.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde_json::json;

/// An OAuth 2.0 error response.
#[derive(Debug)]
pub(crate) struct OAuthError {
    pub(crate) code: &'static str,
    pub(crate) description: String,
    /// Whether the client tried HTTP Basic: a 401 then challenges it (RFC 6749 §5.2).
    pub(crate) basic_challenge: bool,
}

impl OAuthError {
    pub(crate) fn new(code: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            code,
            description: description.into(),
            basic_challenge: false,
        }
    }

    /// The same error, answered with `WWW-Authenticate: Basic` when it is a 401.
    pub(crate) fn with_basic_challenge(mut self) -> Self {
        self.basic_challenge = true;
        self
    }

    pub(crate) fn client(description: impl Into<String>) -> Self {
        Self::new("invalid_client", description)
    }

    pub(crate) fn response(&self) -> HttpResponse {
        // 401 for a client that failed to authenticate (RFC 6749 §5.2), 400 for the rest
        let status = if self.code == "invalid_client" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        let mut response = HttpResponse::build(status);
        if status == StatusCode::UNAUTHORIZED && self.basic_challenge {
            response.insert_header(("WWW-Authenticate", "Basic realm=\"fhir-gateway\""));
        }
        let mut response = response
            .insert_header(("Cache-Control", "no-store"))
            .insert_header(("Pragma", "no-cache"))
            .json(json!({"error": self.code, "error_description": self.description}));
        // the refusal's reason, for its audit record
        response
            .extensions_mut()
            .insert(crate::audit::Failure(format!(
                "{}: {}",
                self.code, self.description
            )));
        response
    }
}

/// An `application/x-www-form-urlencoded` body, each parameter at most once (RFC 6749 §3.2).
#[derive(Debug)]
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    pub(crate) fn parse(body: &[u8]) -> Result<Form, OAuthError> {
        Ok(Form(
            form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ))
    }

    pub(crate) fn get(&self, name: &str) -> Result<Option<&str>, OAuthError> {
        let mut values = self.0.iter().filter(|(k, _)| k == name);
        let first = values.next().map(|(_, v)| v.as_str());
        if values.next().is_some() {
            return Err(OAuthError::new(
                "invalid_request",
                format!("{name} is given more than once"),
            ));
        }
        Ok(first)
    }
}
