//! `[base]/auth/link`: the page where a patient redeems a link code ([`super::binding`]). The
//! patient enters the code (the link from the care provider fills it in) and signs in with
//! their wallet exactly as on the sign-in page (the gateway writes the EIP-4361 message,
//! `[base]/auth/siwe/message`, and verifies the signature, domain and nonce; the page's only
//! script is `assets/siwe.js`). With a verified signature and a good code the binding is made
//! in one transaction, the browser is signed in as the new patient user and the page says the
//! wallet is linked. The code is checked before the wallet signs (a wrong one spends no
//! nonce) and again when the binding is made; wrong codes are counted per browser session.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::Auth;
use super::authorize::{
    Failure, PageForm, SIWE_MESSAGE_PATH, SIWE_SCRIPT_PATH, current_session, posted_session,
    session_or_new, session_user, set_cookie, signed_in_to,
};
use super::binding::{self, LINK_PATH, Refused};
use super::pages;
use super::users::Kind;
use crate::store::grants::Session;

/// The link page, with what the patient typed and what is wrong (about `error_target`,
/// `code` or `siwe-button`).
fn link_page(
    auth: &Auth,
    session: &Session,
    code: &str,
    error: Option<(&str, &str)>,
) -> HttpResponse {
    let (error_target, error) = error.unwrap_or(("code", ""));
    let script_url = auth.url(SIWE_SCRIPT_PATH);
    let message_url = auth.url(SIWE_MESSAGE_PATH);
    pages::render_with_wallet(
        StatusCode::OK,
        &pages::Link {
            action: &auth.url(LINK_PATH),
            csrf_token: &session.csrf_token,
            code,
            error,
            error_target,
            siwe_message_url: &message_url,
            siwe_script_url: &script_url,
        },
        &script_url,
        &message_url,
    )
}

fn internal(error: &anyhow::Error) -> Failure {
    tracing::error!(%error, "a link code could not be checked or redeemed");
    Failure::Internal
}

/// `GET [base]/auth/link[?code=...]`: the page; `?linked` after a redemption says the
/// signed-in patient's wallet is linked.
pub(super) async fn link_get(auth: web::Data<Auth>, req: HttpRequest) -> HttpResponse {
    let query = PageForm::parse(req.query_string().as_bytes());
    let result = async {
        if query.get("linked").is_some()
            && let Some(session) = current_session(&auth, &req).await?
            && let Some(user) = session_user(&auth, &session).await?
            && user.kind == Kind::Patient.as_str()
        {
            return Ok(pages::render(
                StatusCode::OK,
                &pages::Linked {
                    wallet_address: user.wallet_address.as_deref().unwrap_or_default(),
                },
            ));
        }
        let (session, new_cookie) = session_or_new(&auth, &req).await?;
        let code = query.get("code").unwrap_or_default();
        let mut response = link_page(&auth, &session, code, None);
        if let Some(cookie) = new_cookie {
            set_cookie(&mut response, &auth, &cookie);
        }
        Ok::<_, Failure>(response)
    }
    .await;
    result.unwrap_or_else(Failure::response)
}

/// `POST [base]/auth/link` (form: `csrf_token`, `code`, `message`, `signature`): checks the
/// code, verifies the signed message ([`super::siwe::verify`]), binds the Patient to the
/// wallet ([`binding::redeem`]) and signs the patient in. Refusals are shown on the page.
pub(super) async fn link_post(
    auth: web::Data<Auth>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let form = PageForm::parse(&body);
    let result = async {
        let session = posted_session(&auth, &req, &form).await?;
        let code = form.get("code").unwrap_or_default().trim();
        let refuse =
            |target: &str, text: &str| Ok(link_page(&auth, &session, code, Some((target, text))));
        if !binding::may_try_codes(&auth.store, &session.session_hash)
            .await
            .map_err(|e| internal(&e))?
        {
            return refuse("code", &Refused::TooManyWrongCodes.to_string());
        }
        if code.is_empty() {
            return refuse("code", "Enter the link code from your care provider.");
        }
        if let Err(refused) = binding::check_code(&auth.store, code)
            .await
            .map_err(|e| internal(&e))?
        {
            if refused == Refused::UnknownCode {
                tracing::info!("a wrong link code was tried");
                let may_retry = binding::count_wrong_code(&auth.store, &session.session_hash)
                    .await
                    .map_err(|e| internal(&e))?;
                if !may_retry {
                    return refuse("code", &Refused::TooManyWrongCodes.to_string());
                }
            }
            return refuse("code", &refused.to_string());
        }
        // a browser submits a form's line breaks as CRLF; EIP-4361 messages have LF
        let message = form
            .get("message")
            .unwrap_or_default()
            .replace("\r\n", "\n");
        let signature = form.get("signature").unwrap_or_default();
        if message.is_empty() || signature.is_empty() {
            return refuse("siwe-button", "Sign the message with your wallet first.");
        }
        let verified = super::siwe::verify(
            &auth.store,
            &auth.siwe,
            &message,
            signature,
            &session.session_hash,
        )
        .await
        .map_err(|e| internal(&e))?;
        let address = match verified {
            Ok(address) => address,
            Err(refused) => {
                tracing::info!(reason = %refused, "a wallet signature for a link code was refused");
                let text = format!("Your wallet's signature was not accepted: {refused}.");
                return refuse("siwe-button", &text);
            }
        };
        let user = match binding::redeem(&auth.store, code, &address)
            .await
            .map_err(|e| internal(&e))?
        {
            Ok(user) => user,
            Err(refused) => {
                tracing::info!(reason = ?refused, "a link code was not redeemed");
                let target = match refused {
                    Refused::UnknownCode | Refused::UsedCode | Refused::ExpiredCode => "code",
                    _ => "siwe-button",
                };
                let text = match refused {
                    Refused::NoSuchPatient => {
                        "The health record this code was issued for no longer exists. Ask your care provider.".to_owned()
                    }
                    other => other.to_string(),
                };
                return refuse(target, &text);
            }
        };
        let linked = format!("{}?linked", auth.url(LINK_PATH));
        signed_in_to(&auth, &session, &user, None, &linked).await
    }
    .await;
    result.unwrap_or_else(Failure::response)
}
