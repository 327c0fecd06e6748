//! `POST [base]/auth/revoke`: token revocation (RFC 7009). The client authenticates as at
//! the token endpoint and may revoke only its own tokens. A refresh token revokes its whole
//! family (the access tokens issued with it too); an access token is recorded by its `jti`
//! until it expires. Unknown, foreign and already revoked tokens get 200 as well (§2.2).

use actix_web::{HttpRequest, HttpResponse, web};

use super::grants::{hash_secret, now_millis};
use super::oauth::{Form, OAuthError};
use super::{Auth, client_auth};
use crate::store::grants as store;

pub(super) async fn revoke(
    auth: web::Data<Auth>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    match run(&auth, &req, &body).await {
        Ok(()) => HttpResponse::Ok()
            .insert_header(("Cache-Control", "no-store"))
            .finish(),
        Err(error) => {
            tracing::info!(error = error.code, "revocation refused");
            error.response()
        }
    }
}

async fn run(auth: &Auth, req: &HttpRequest, body: &[u8]) -> Result<(), OAuthError> {
    let form = Form::parse(body)?;
    let client = client_auth::authenticate(auth, req.headers(), &form).await?;
    let token = form
        .get("token")?
        .ok_or_else(|| OAuthError::new("invalid_request", "token is missing"))?;
    let database = |error: sqlx::Error| {
        tracing::error!(%error, "revocation could not reach the database");
        OAuthError::new("server_error", "the database is unavailable")
    };
    let now = now_millis();
    let mut tx = auth.store.begin().await.map_err(database)?;
    if let Ok(claims) = auth.verify(token) {
        if claims.client_id == client.client.client_id {
            store::revoke_jti(&mut tx, &claims.jti, claims.exp)
                .await
                .map_err(database)?;
            tracing::info!(client_id = %claims.client_id, "revoked an access token");
        }
    } else if let Some(refresh) = store::find_refresh(&mut tx, &hash_secret(token))
        .await
        .map_err(database)?
        && refresh.grant.client_id == client.client.client_id
    {
        store::revoke_family(&mut tx, &refresh.grant.family_id, now)
            .await
            .map_err(database)?;
        tracing::info!(client_id = %refresh.grant.client_id, "revoked a refresh token family");
    }
    tx.commit().await.map_err(database)?;
    Ok(())
}
