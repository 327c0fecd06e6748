//! `POST [base]/auth/introspect`: token introspection (RFC 7662, as SMART App Launch 2.2
//! "Token Introspection" profiles it). The caller authorizes with a bearer token of this
//! server (any valid, unrevoked access token) or authenticates as a client (as at the token
//! endpoint); it may then introspect any token. Access tokens answer with their claims
//! (`scope`, `client_id`, `sub`, `exp`, `iat`, `iss`, `patient`, `encounter`, `fhirUser`);
//! refresh tokens with those of their grant; revoked, expired, used and unknown tokens with
//! `{"active": false}` only.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Map, Value, json};

use super::grants::{hash_secret, now_millis};
use super::oauth::{Form, OAuthError};
use super::{Auth, client_auth};
use crate::store::grants as store;
use crate::store::users;

pub(super) async fn introspect(
    auth: web::Data<Auth>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    match run(&auth, &req, &body).await {
        Ok(answer) => HttpResponse::Ok()
            .insert_header(("Cache-Control", "no-store"))
            .insert_header(("Pragma", "no-cache"))
            .json(answer),
        Err(error) => {
            tracing::info!(error = error.code, "introspection refused");
            let mut response = error.response();
            if error.code == "invalid_client" {
                response.headers_mut().insert(
                    actix_web::http::header::WWW_AUTHENTICATE,
                    actix_web::http::header::HeaderValue::from_static("Bearer"),
                );
            }
            response
        }
    }
}

#[allow(clippy::needless_pass_by_value)] // for `map_err(database)`
fn database(error: sqlx::Error) -> OAuthError {
    tracing::error!(%error, "introspection could not reach the database");
    OAuthError::new("server_error", "the database is unavailable")
}

/// Whether the access token's `jti` was revoked.
async fn revoked(auth: &Auth, jti: &str) -> Result<bool, OAuthError> {
    let mut conn = auth.store.reader().await.map_err(database)?;
    store::is_revoked(&mut conn, jti).await.map_err(database)
}

async fn run(auth: &Auth, req: &HttpRequest, body: &[u8]) -> Result<Value, OAuthError> {
    let form = Form::parse(body)?;
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        });
    match bearer {
        Some(caller) => {
            let claims = auth
                .verify(caller.trim())
                .map_err(|e| OAuthError::client(format!("the bearer token: {e}")))?;
            if revoked(auth, &claims.jti).await? {
                return Err(OAuthError::client("the bearer token was revoked"));
            }
        }
        None => {
            client_auth::authenticate(auth, req.headers(), &form).await?;
        }
    }
    let token = form
        .get("token")?
        .ok_or_else(|| OAuthError::new("invalid_request", "token is missing"))?;
    let inactive = json!({"active": false});
    if let Ok(claims) = auth.verify(token) {
        if revoked(auth, &claims.jti).await? {
            return Ok(inactive);
        }
        let mut answer = Map::new();
        answer.insert("active".into(), Value::Bool(true));
        answer.insert("token_type".into(), Value::from("Bearer"));
        answer.insert("scope".into(), Value::from(claims.scope));
        answer.insert("client_id".into(), Value::from(claims.client_id));
        answer.insert("sub".into(), Value::from(claims.sub));
        answer.insert("iss".into(), Value::from(claims.iss));
        answer.insert("aud".into(), Value::from(claims.aud));
        answer.insert("exp".into(), Value::from(claims.exp));
        answer.insert("iat".into(), Value::from(claims.iat));
        for (name, value) in [
            ("patient", claims.patient),
            ("encounter", claims.encounter),
            ("fhirUser", claims.fhir_user),
        ] {
            if let Some(value) = value {
                answer.insert(name.into(), Value::from(value));
            }
        }
        return Ok(Value::Object(answer));
    }
    let mut conn = auth.store.reader().await.map_err(database)?;
    let Some(refresh) = store::find_refresh(&mut conn, &hash_secret(token))
        .await
        .map_err(database)?
    else {
        return Ok(inactive);
    };
    let now = now_millis();
    let session_ended = match &refresh.session_hash {
        Some(session) => !store::session_is_live(&mut conn, session, now)
            .await
            .map_err(database)?,
        None => false,
    };
    if refresh.revoked_at.is_some()
        || refresh.used_at.is_some()
        || refresh.expires_at <= now
        || session_ended
    {
        return Ok(inactive);
    }
    let user = users::find(&mut conn, &refresh.grant.user_id)
        .await
        .map_err(database)?;
    let mut answer = Map::new();
    answer.insert("active".into(), Value::Bool(true));
    answer.insert("token_type".into(), Value::from("refresh_token"));
    answer.insert("scope".into(), Value::from(refresh.grant.scope));
    answer.insert("client_id".into(), Value::from(refresh.grant.client_id));
    answer.insert("sub".into(), Value::from(refresh.grant.user_id));
    answer.insert("iss".into(), Value::from(auth.issuer.clone()));
    answer.insert("exp".into(), Value::from(refresh.expires_at / 1000));
    answer.insert("iat".into(), Value::from(refresh.created_at / 1000));
    if let Some(patient) = refresh.grant.patient {
        answer.insert("patient".into(), Value::from(patient));
    }
    if let Some(encounter) = refresh.grant.encounter {
        answer.insert("encounter".into(), Value::from(encounter));
    }
    if let Some(user) = user {
        answer.insert("fhirUser".into(), Value::from(user.fhir_user));
    }
    Ok(Value::Object(answer))
}
