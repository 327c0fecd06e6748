//! Who is asking, and what they may see and change: the actor model of issue 4 (item 8) and
//! the enforcement of SMART scopes on the FHIR API.
//!
//! Every FHIR request gets an [`Access`] (an actix extractor): built from the verified claims
//! of its bearer token, or the operator's full access when `[auth] required = false`. The
//! interactions take it and ask it, per resource type and permission, what is allowed:
//! nothing (403), everything, or the resources matching a [`Filter`] that becomes part of the
//! query (search, includes, chains) or is checked on the resource row (read, writes). The
//! rules are in ARCHITECTURE.md ("Access").
//!
//! Consent (issue 5, [`crate::consent`]) narrows what [`Access::allowed`] returns for reads
//! of patient-compartment data: the request's [`Gate`] adds the consent condition to the
//! scopes' filter (the same seam builds every access filter), so read, vread, history,
//! search, includes, chains, `$everything`, Bundle entries and `$proof` all apply it.

use std::collections::BTreeSet;

use actix_web::{FromRequest, HttpMessage as _, HttpRequest, dev::Payload, web};
use fhir_profiles::compartment::{patient_compartment_params, patient_compartment_types};
use sqlx::AnyConnection;

use crate::auth::Auth;
use crate::auth::claims::{AccessClaims, UserKind};
use crate::auth::scopes::{Context, Permission, ResourceScope, ScopeSet};
use crate::config::ConsentDenied;
use crate::consent::{BREAK_THE_GLASS_PURPOSE, BreakGlass, Consent, Gate};
use crate::error::{Error, Result};
use crate::store::search::{self as sql, Alternative, Filter, TypeCondition};

/// The request header naming the purpose of use (a v3 ActReason code such as `TREAT`).
pub const PURPOSE_OF_USE_HEADER: &str = "X-Purpose-Of-Use";
/// The purpose of use when neither the token nor the request names one: treatment.
pub const DEFAULT_PURPOSE_OF_USE: &str = "TREAT";

/// What of the audit trail a request may read ([`Access::allowed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuditTrail {
    All,
    OwnRecord,
    Nothing,
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The operator, when the API requires no token (`[auth] required = false`): full access.
    Operator,
    /// A signed-in user, through an app (`client_id`): a patient, practitioner or staff.
    User {
        kind: UserKind,
        /// The user's id at the authorization server (`sub`).
        id: String,
        /// The user's FHIR resource (`Patient/123`, `Practitioner/7`), when known.
        fhir_user: Option<String>,
    },
    /// A client acting for itself, with no user (Backend Services): an organization's system.
    Client,
}

/// Everything about the party behind one request that decides what it may do.
#[derive(Debug, Clone)]
pub struct Access {
    pub actor: Actor,
    /// The client (app or backend system) the token was issued to; `None` for the operator.
    pub client_id: Option<String>,
    /// The granted scopes (empty for the operator, who needs none).
    pub scopes: ScopeSet,
    /// The launch patient: the compartment `patient/` scopes are confined to.
    pub patient: Option<String>,
    /// The launch encounter.
    pub encounter: Option<String>,
    /// The purpose of use (a v3 ActReason code): the token's, else `TREAT`.
    pub purpose_of_use: String,
    /// The token's id (for audit); `None` for the operator.
    pub jti: Option<String>,
    /// Break-the-glass: a user with that permission named the emergency purpose of use, so
    /// patient data is served without a consent grant (audited and flagged).
    pub break_glass: bool,
    /// The auditor role: every AuditEvent may be read, without consent.
    pub auditor: bool,
    /// What on-chain consent lets through ([`Gate::Open`] until [`Consent::gate`] set it).
    pub consent: Gate,
    /// How a read of one resource that consent does not cover answers.
    pub consent_denied: ConsentDenied,
}

impl Access {
    /// Full access, no token: `[auth] required = false` (and the operator's own tools).
    pub fn operator(purpose_of_use: Option<&str>) -> Access {
        Access {
            actor: Actor::Operator,
            client_id: None,
            scopes: ScopeSet::default(),
            patient: None,
            encounter: None,
            purpose_of_use: purpose_of_use.unwrap_or(DEFAULT_PURPOSE_OF_USE).to_owned(),
            jti: None,
            break_glass: false,
            auditor: false,
            consent: Gate::Open,
            consent_denied: ConsentDenied::Forbidden,
        }
    }

    /// The access a verified token grants. A request can name a purpose of use only if it is
    /// the token's own (it cannot widen it), else 403; or `ETREAT` (break-the-glass) if the
    /// token's user holds that permission.
    pub fn from_claims(claims: AccessClaims, requested_purpose: Option<&str>) -> Result<Access> {
        let mut purpose = claims
            .purpose_of_use
            .clone()
            .unwrap_or_else(|| DEFAULT_PURPOSE_OF_USE.to_owned());
        let mut break_glass = false;
        if let Some(requested) = requested_purpose
            && requested != purpose
        {
            if requested != BREAK_THE_GLASS_PURPOSE {
                return Err(Error::Forbidden(format!(
                    "the token was granted for the purpose of use {purpose}; a request cannot name another ({requested})"
                )));
            }
            if !(claims.break_glass && claims.user_kind.is_some()) {
                return Err(Error::Forbidden(format!(
                    "only users with the break-the-glass permission may name the purpose of use {BREAK_THE_GLASS_PURPOSE} (emergency treatment without consent); this token's user does not hold it"
                )));
            }
            break_glass = true;
            purpose = BREAK_THE_GLASS_PURPOSE.to_owned();
        }
        let actor = match claims.user_kind {
            Some(kind) => Actor::User {
                kind,
                id: claims.sub,
                fhir_user: claims.fhir_user,
            },
            None => Actor::Client,
        };
        Ok(Access {
            actor,
            client_id: Some(claims.client_id),
            // the token endpoint signed these scopes; what this server does not know is ignored
            scopes: ScopeSet::parse_lenient(&claims.scope),
            patient: claims.patient,
            encounter: claims.encounter,
            purpose_of_use: purpose,
            jti: Some(claims.jti),
            break_glass,
            auditor: claims.auditor && claims.user_kind == Some(UserKind::Staff),
            consent: Gate::Open,
            consent_denied: ConsentDenied::Forbidden,
        })
    }

    pub fn is_operator(&self) -> bool {
        self.actor == Actor::Operator
    }

    /// The patient whose own compartment a patient user's `user/` scopes are confined to.
    fn patient_user(&self) -> Option<Result<&str>> {
        match &self.actor {
            Actor::User {
                kind: UserKind::Patient,
                fhir_user,
                ..
            } => Some(
                fhir_user
                    .as_deref()
                    .and_then(|u| u.strip_prefix("Patient/"))
                    .ok_or_else(|| {
                        Error::Forbidden(
                            "the token is a patient's but names no Patient record (fhirUser), so it cannot reach any patient data"
                                .to_owned(),
                        )
                    }),
            ),
            _ => None,
        }
    }

    /// What of the audit trail this request may read: everything (the operator, an auditor),
    /// what is about the user's own record (a patient), or nothing.
    fn audit_trail(&self) -> AuditTrail {
        if self.is_operator() || self.auditor {
            AuditTrail::All
        } else if self.patient_user().is_some() {
            AuditTrail::OwnRecord
        } else {
            AuditTrail::Nothing
        }
    }

    /// What `permission` on `resource_type` is allowed: `None` every resource of the type,
    /// `Some(filter)` those matching it; 403 when no scope grants it. Reads of
    /// patient-compartment types are narrowed further by consent (503 when its view is stale).
    /// AuditEvents are read by auditors (all of them, consent aside) and by patients (those
    /// about their own record), by nobody else.
    pub fn allowed(&self, permission: Permission, resource_type: &str) -> Result<Option<Filter>> {
        if resource_type == crate::audit::AUDIT_EVENT
            && matches!(permission, Permission::Read | Permission::Search)
        {
            match self.audit_trail() {
                AuditTrail::All => return self.scope_allowed(permission, resource_type),
                AuditTrail::OwnRecord => {}
                AuditTrail::Nothing => {
                    return Err(Error::Forbidden(
                        "AuditEvents are read by auditors (staff users the operator gave the auditor role) and by patients, of their own record; this token's user is neither"
                            .to_owned(),
                    ));
                }
            }
        }
        if resource_type == "Consent"
            && matches!(
                permission,
                Permission::Create | Permission::Update | Permission::Delete
            )
        {
            return Err(crate::consent::projection::read_only_error());
        }
        let scope = self.scope_allowed(permission, resource_type)?;
        let consent = self.consent_filter(permission, resource_type)?;
        Ok(match (scope, consent) {
            (scope, None) => scope,
            (None, consent) => consent,
            (Some(scope), Some(consent)) => Some(both(scope, Some(consent))),
        })
    }

    /// Whether reads of `resource_type` are consent-gated for this request: patient data
    /// (the Patient compartment) read while the gate is not open.
    fn consent_gated(&self, permission: Permission, resource_type: &str) -> bool {
        matches!(permission, Permission::Read | Permission::Search)
            && !matches!(self.consent, Gate::Open)
            && (resource_type == "Patient" || !patient_compartment_params(resource_type).is_empty())
    }

    /// The consent condition on reads of `resource_type`, if any.
    fn consent_filter(
        &self,
        permission: Permission,
        resource_type: &str,
    ) -> Result<Option<Filter>> {
        if !self.consent_gated(permission, resource_type) {
            return Ok(None);
        }
        match &self.consent {
            Gate::Open => {
                crate::telemetry::consent_decision(if self.break_glass {
                    "break-the-glass"
                } else {
                    "not-gated"
                });
                Ok(None)
            }
            Gate::Stale(reason) => {
                crate::telemetry::consent_decision("refused-stale");
                Err(Error::Unavailable(reason.clone()))
            }
            Gate::Grants(grants) => {
                crate::telemetry::consent_decision("filtered");
                Ok(Some(Filter::Consent {
                    grants: grants.clone(),
                    params: patient_compartment_params(resource_type).to_vec(),
                }))
            }
        }
    }

    /// What the token's scopes allow of `permission` on `resource_type`, consent aside.
    fn scope_allowed(&self, permission: Permission, resource_type: &str) -> Result<Option<Filter>> {
        if self.is_operator() {
            return Ok(None);
        }
        let granting: Vec<&ResourceScope> = self
            .scopes
            .resources
            .iter()
            .filter(|s| s.covers(resource_type) && s.allows(permission))
            .collect();
        if granting.is_empty() {
            return Err(self.missing_scope(permission, resource_type));
        }
        let mut alternatives = Vec::new();
        for scope in granting {
            let mut filters = scope
                .filters_for(resource_type)
                .map_err(|e| Error::Forbidden(format!("the scope cannot be applied: {e}")))?;
            if let Some(compartment) = self.context_filter(scope.context, resource_type)? {
                filters.push(compartment);
            }
            if filters.is_empty() {
                return Ok(None);
            }
            alternatives.push(Alternative {
                types: TypeCondition::Any,
                filters,
            });
        }
        Ok(Some(Filter::AnyOf(alternatives)))
    }

    /// What `permission` is allowed across `types` (empty: every type), each type with its
    /// own condition. 403 when a named type is not granted at all, or (every type) when no
    /// type is.
    pub fn allowed_types(
        &self,
        permission: Permission,
        types: &[String],
    ) -> Result<Option<Filter>> {
        if self.is_operator() {
            return Ok(None);
        }
        if !types.is_empty() {
            let mut alternatives = Vec::new();
            let mut restricted = false;
            for t in types {
                let filters = match self.allowed(permission, t)? {
                    None => Vec::new(),
                    Some(filter) => {
                        restricted = true;
                        vec![filter]
                    }
                };
                alternatives.push(Alternative {
                    types: TypeCondition::Is(t.clone()),
                    filters,
                });
            }
            return Ok(restricted.then_some(Filter::AnyOf(alternatives)));
        }
        let granting: Vec<&ResourceScope> = self
            .scopes
            .resources
            .iter()
            .filter(|s| s.allows(permission))
            .collect();
        if granting.is_empty() {
            return Err(self.missing_scope(permission, "*"));
        }
        // the types with a condition of their own: those named by a scope, and with a `*`
        // scope in a compartment context, every type of the Patient compartment
        let mut named: BTreeSet<String> = granting
            .iter()
            .filter_map(|s| s.resource_type.clone())
            .collect();
        let wildcards: Vec<&&ResourceScope> = granting
            .iter()
            .filter(|s| s.resource_type.is_none())
            .collect();
        let compartment_bound = wildcards.iter().any(|s| {
            s.context == Context::Patient
                || (s.context == Context::User && self.patient_user().is_some())
        });
        if compartment_bound || self.consent_gated(permission, "Patient") {
            named.extend(patient_compartment_types().map(str::to_owned));
            named.insert("Patient".to_owned());
        }
        // the audit trail has its own rule (Access::allowed): searches across types leave
        // out what it does not let through rather than fail
        let audit_trail = self.audit_trail();
        if audit_trail != AuditTrail::All {
            named.insert(crate::audit::AUDIT_EVENT.to_owned());
        }
        let mut alternatives = Vec::new();
        let mut restricted = false;
        for t in &named {
            if t == crate::audit::AUDIT_EVENT && audit_trail == AuditTrail::Nothing {
                restricted = true;
                alternatives.push(Alternative {
                    types: TypeCondition::Is(t.clone()),
                    filters: vec![Filter::AnyOf(Vec::new())],
                });
                continue;
            }
            let filters = match self.allowed(permission, t)? {
                None => Vec::new(),
                Some(filter) => {
                    restricted = true;
                    vec![filter]
                }
            };
            alternatives.push(Alternative {
                types: TypeCondition::Is(t.clone()),
                filters,
            });
        }
        // every other type, through the `*` scopes (no compartment: no patient data there)
        let mut rest = Vec::new();
        for scope in &wildcards {
            let filters = scope
                .filters_for("Resource")
                .map_err(|e| Error::Forbidden(format!("the scope cannot be applied: {e}")))?;
            rest.push(Alternative {
                types: TypeCondition::Any,
                filters,
            });
        }
        if rest.is_empty() {
            // only the named types
            restricted = true;
        } else if rest.iter().any(|a| a.filters.is_empty()) {
            alternatives.push(Alternative {
                types: TypeCondition::NotIn(named.iter().cloned().collect()),
                filters: Vec::new(),
            });
        } else {
            restricted = true;
            alternatives.push(Alternative {
                types: TypeCondition::NotIn(named.iter().cloned().collect()),
                filters: vec![Filter::AnyOf(rest)],
            });
        }
        Ok(restricted.then_some(Filter::AnyOf(alternatives)))
    }

    /// The condition a scope's context puts on resources of `resource_type`: the launch
    /// patient's compartment for `patient/`, a patient user's own for their `user/` scopes;
    /// none for types outside the Patient compartment (they hold no patient data).
    fn context_filter(&self, context: Context, resource_type: &str) -> Result<Option<Filter>> {
        let patient = match context {
            Context::System => return Ok(None),
            Context::User => match self.patient_user() {
                None => return Ok(None),
                Some(patient) => patient?,
            },
            Context::Patient => self.patient.as_deref().ok_or_else(|| {
                Error::Forbidden(
                    "the token has patient/ scopes but no launch patient, so it cannot reach any patient data"
                        .to_owned(),
                )
            })?,
        };
        let params = patient_compartment_params(resource_type);
        if params.is_empty() && resource_type != "Patient" {
            return Ok(None);
        }
        Ok(Some(Filter::PatientCompartment {
            patient_id: patient.to_owned(),
            params: params.to_vec(),
        }))
    }

    /// 403: no scope grants `permission` on `resource_type`, with the scope that would.
    fn missing_scope(&self, permission: Permission, resource_type: &str) -> Error {
        let context = [Context::Patient, Context::User, Context::System]
            .into_iter()
            .find(|c| self.scopes.has_context(*c))
            .unwrap_or(Context::System);
        let context = match context {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        };
        let (verb, letter) = verb(permission);
        let what = if resource_type == "*" {
            "resources".to_owned()
        } else {
            resource_type.to_owned()
        };
        Error::Forbidden(format!(
            "to {verb} {what} the token needs a scope granting it, such as {context}/{resource_type}.{letter}; its scopes are: {}",
            if self.scopes.is_empty() {
                "none".to_owned()
            } else {
                self.scopes.to_string()
            }
        ))
    }

    /// Reads the current version of `resource_type/id` together with the consent check a read
    /// of it needs (one query); `Ok(None)` when there is no such resource. The consent refusal
    /// comes after the caller's own checks: [`Access::consent_refusal`].
    pub async fn read_current(
        &self,
        conn: &mut AnyConnection,
        base_url: &str,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<(crate::store::StoredVersion, bool)>> {
        match self.consent_filter(Permission::Read, resource_type)? {
            None => Ok(crate::store::read_current(conn, resource_type, id)
                .await?
                .map(|stored| (stored, true))),
            Some(filter) => {
                // built for one row; undecided (a row in several compartments) is checked
                // again with every compartment reference probed
                let checked =
                    async |conn: &mut AnyConnection, one_row: bool| -> Result<_> {
                        let mut sql = sql::Sql::default();
                        sql.one_row = one_row;
                        let condition =
                            sql::condition(&mut sql, "r", resource_type, &filter, base_url)?;
                        Ok(crate::store::read_current_checked(
                            conn,
                            sql,
                            &condition,
                            resource_type,
                            id,
                        )
                        .await?)
                    };
                Ok(match checked(conn, true).await? {
                    Some((stored, Some(passes))) => Some((stored, passes)),
                    Some((_, None)) => checked(conn, false)
                        .await?
                        .map(|(stored, passes)| (stored, passes == Some(true))),
                    None => None,
                })
            }
        }
    }

    /// The refusal of a read of `resource_type/id` that consent does not cover.
    pub fn consent_refusal(&self, resource_type: &str, id: &str) -> Error {
        crate::telemetry::consent_decision("denied");
        Consent::denied_error(self.consent_denied, resource_type, id, &self.purpose_of_use)
    }

    /// 403 unless `resource_type/id` (its current row) is within what the token's scopes allow
    /// for `permission` (consent aside: a read checks it with [`Access::read_current`]).
    pub async fn check_scope(
        &self,
        conn: &mut AnyConnection,
        base_url: &str,
        permission: Permission,
        resource_type: &str,
        id: &str,
    ) -> Result<()> {
        if let Some(filter) = self.scope_allowed(permission, resource_type)?
            && !sql::row_matches(conn, resource_type, id, &filter, base_url).await?
        {
            let (verb, _) = verb(permission);
            return Err(Error::Forbidden(format!(
                "{resource_type}/{id} is outside what the token may {verb} (its scopes' restrictions or patient compartment): {}",
                self.scopes
            )));
        }
        Ok(())
    }

    /// 403 unless `resource_type/id` (its current row) is within what `permission` allows.
    pub async fn check(
        &self,
        conn: &mut AnyConnection,
        base_url: &str,
        permission: Permission,
        resource_type: &str,
        id: &str,
    ) -> Result<()> {
        self.check_scope(conn, base_url, permission, resource_type, id)
            .await?;
        if let Some(filter) = self.consent_filter(permission, resource_type)?
            && !sql::row_matches(conn, resource_type, id, &filter, base_url).await?
        {
            return Err(self.consent_refusal(resource_type, id));
        }
        Ok(())
    }

    /// Search filters confined to what the token may search: the inner resources of chained
    /// parameters and `_has` must be searchable too, so that a search cannot reveal what the
    /// token cannot see.
    pub fn confine(&self, filter: Filter) -> Result<Filter> {
        if self.is_operator() {
            return Ok(filter);
        }
        Ok(match filter {
            Filter::Chain {
                param,
                target_types,
                inner,
            } => {
                let inner = self.confine(*inner)?;
                let allowed = self.searchable(&target_types)?;
                Filter::Chain {
                    param,
                    target_types,
                    inner: Box::new(both(inner, allowed)),
                }
            }
            Filter::Has {
                source_type,
                param,
                inner,
            } => {
                let inner = self.confine(*inner)?;
                let allowed = self.searchable(std::slice::from_ref(&source_type))?;
                Filter::Has {
                    source_type,
                    param,
                    inner: Box::new(both(inner, allowed)),
                }
            }
            other => other,
        })
    }

    /// What may be searched among `types`; nothing (rather than 403) when nothing is.
    fn searchable(&self, types: &[String]) -> Result<Option<Filter>> {
        let mut alternatives = Vec::new();
        let mut restricted = false;
        for t in types {
            match self.allowed(Permission::Search, t) {
                Ok(None) => alternatives.push(Alternative {
                    types: TypeCondition::Is(t.clone()),
                    filters: Vec::new(),
                }),
                Ok(Some(filter)) => {
                    restricted = true;
                    alternatives.push(Alternative {
                        types: TypeCondition::Is(t.clone()),
                        filters: vec![filter],
                    });
                }
                Err(Error::Forbidden(_)) => restricted = true,
                Err(other) => return Err(other),
            }
        }
        Ok(restricted.then_some(Filter::AnyOf(alternatives)))
    }

    /// What may be read among `types` (for `_include`d resources; empty: any type): `None`
    /// everything, else a filter (matching nothing when nothing may be read).
    pub fn readable_of(&self, types: &[String]) -> Result<Option<Filter>> {
        match types {
            [] => self.readable(None),
            [one] => self.readable(Some(one)),
            several => match self.allowed_types(Permission::Read, several) {
                Err(Error::Forbidden(_)) => {
                    // some of them may be readable: each on its own
                    let alternatives = several
                        .iter()
                        .filter_map(|t| match self.readable(Some(t)) {
                            Ok(Some(Filter::AnyOf(a))) if a.is_empty() => None,
                            Ok(filter) => Some(Ok(Alternative {
                                types: TypeCondition::Is(t.clone()),
                                filters: filter.into_iter().collect(),
                            })),
                            Err(e) => Some(Err(e)),
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Ok(Some(Filter::AnyOf(alternatives)))
                }
                other => other,
            },
        }
    }

    /// What may be read (for `_include`d resources): `None` everything, else a filter
    /// (matching nothing when nothing may be read).
    pub fn readable(&self, resource_type: Option<&str>) -> Result<Option<Filter>> {
        let result = match resource_type {
            Some(t) => self.allowed(Permission::Read, t),
            None => self.allowed_types(Permission::Read, &[]),
        };
        match result {
            Err(Error::Forbidden(_)) => Ok(Some(Filter::AnyOf(Vec::new()))),
            other => other,
        }
    }
}

/// `inner AND allowed`.
fn both(inner: Filter, allowed: Option<Filter>) -> Filter {
    match allowed {
        None => inner,
        Some(allowed) => Filter::AnyOf(vec![Alternative {
            types: TypeCondition::Any,
            filters: vec![inner, allowed],
        }]),
    }
}

fn verb(permission: Permission) -> (&'static str, char) {
    match permission {
        Permission::Create => ("create", 'c'),
        Permission::Read => ("read", 'r'),
        Permission::Update => ("update", 'u'),
        Permission::Delete => ("delete", 'd'),
        Permission::Search => ("search", 's'),
    }
}

/// The access of a request: its bearer token verified (RFC 6750 §2.1), or the operator's
/// when the API requires no token. Tokens are never logged.
impl FromRequest for Access {
    type Error = Error;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Access>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let access = access_of(req);
        let auth = req.app_data::<web::Data<Auth>>().cloned();
        let consent = req.app_data::<web::Data<Consent>>().cloned();
        let req = req.clone();
        Box::pin(async move {
            let mut access = access?;
            if let Some(consent) = consent {
                access.consent = consent.gate(&access).await?;
                access.consent_denied = consent.config().denied;
            }
            // who asked, for the audit record of the request (when it gets one)
            if req.extensions().contains::<crate::audit::Pending>() {
                req.extensions_mut().insert(crate::audit::Who::of(&access));
            }
            if access.break_glass
                && let Actor::User { id, .. } = &access.actor
            {
                // recorded by the middleware before the response goes out
                req.extensions_mut().insert(BreakGlass {
                    user_id: id.clone(),
                    client_id: access.client_id.clone().unwrap_or_default(),
                    jti: access.jti.clone().unwrap_or_default(),
                });
            }
            // a revoked token (RFC 7009) is refused like an invalid one
            if let (Some(jti), Some(auth)) = (&access.jti, auth)
                && auth
                    .is_revoked(jti)
                    .await
                    .map_err(|e| Error::Internal(e.into()))?
            {
                return Err(Error::Unauthorized {
                    realm: auth.fhir_base_url().to_owned(),
                    invalid_token: true,
                    description: "the access token was revoked".to_owned(),
                });
            }
            Ok(access)
        })
    }
}

fn access_of(req: &HttpRequest) -> Result<Access> {
    let purpose =
        match req.headers().get(PURPOSE_OF_USE_HEADER) {
            Some(value) => Some(value.to_str().map_err(|_| {
                Error::Invalid(format!("{PURPOSE_OF_USE_HEADER} is not valid text"))
            })?),
            None => None,
        };
    let auth = req.app_data::<web::Data<Auth>>().ok_or_else(|| {
        Error::Internal(anyhow::anyhow!("the authorization server is not set up"))
    })?;
    if !auth.required {
        return Ok(Access::operator(purpose));
    }
    let realm = auth.fhir_base_url().to_owned();
    let Some(header) = req.headers().get(actix_web::http::header::AUTHORIZATION) else {
        return Err(Error::Unauthorized {
            realm,
            invalid_token: false,
            description: "this request needs an access token (Authorization: Bearer ...); get one from the authorization server (see .well-known/smart-configuration)".to_owned(),
        });
    };
    let token = header
        .to_str()
        .ok()
        .and_then(|h| {
            h.split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        })
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
        .ok_or_else(|| Error::Unauthorized {
            realm: realm.clone(),
            invalid_token: true,
            description: "the Authorization header must be Bearer followed by an access token"
                .to_owned(),
        })?;
    let claims = auth.verify(token).map_err(|e| Error::Unauthorized {
        realm,
        invalid_token: true,
        description: e.0,
    })?;
    Access::from_claims(claims, purpose)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(scope: &str, patient: Option<&str>) -> Access {
        Access {
            actor: Actor::Client,
            client_id: Some("app".to_owned()),
            scopes: ScopeSet::parse(scope).expect("valid scopes"),
            patient: patient.map(str::to_owned),
            encounter: None,
            purpose_of_use: DEFAULT_PURPOSE_OF_USE.to_owned(),
            jti: Some("j".to_owned()),
            break_glass: false,
            auditor: false,
            consent: Gate::Open,
            consent_denied: ConsentDenied::Forbidden,
        }
    }

    #[test]
    fn unrestricted_scopes_need_no_condition_and_missing_ones_say_what_is_needed() {
        let a = access("system/Observation.rs system/*.r", None);
        assert!(matches!(
            a.allowed(Permission::Search, "Observation"),
            Ok(None)
        ));
        assert!(matches!(a.allowed(Permission::Read, "Patient"), Ok(None)));
        match a.allowed(Permission::Search, "Patient") {
            Err(Error::Forbidden(message)) => {
                assert!(message.contains("system/Patient.s"), "{message}")
            }
            other => panic!("expected 403, got {other:?}"),
        }
        assert!(matches!(
            a.allowed(Permission::Create, "Observation"),
            Err(Error::Forbidden(_))
        ));
        assert!(matches!(
            Access::operator(None).allowed(Permission::Delete, "Patient"),
            Ok(None)
        ));
    }

    #[test]
    fn patient_scopes_are_confined_to_the_compartment_except_for_types_outside_it() {
        let a = access("patient/*.rs", Some("p1"));
        assert!(matches!(
            a.allowed(Permission::Read, "Observation"),
            Ok(Some(Filter::AnyOf(_)))
        ));
        assert!(matches!(
            a.allowed(Permission::Read, "Organization"),
            Ok(None)
        ));
        let without_patient = access("patient/*.rs", None);
        assert!(matches!(
            without_patient.allowed(Permission::Read, "Observation"),
            Err(Error::Forbidden(_))
        ));
    }

    #[test]
    fn a_request_cannot_widen_the_tokens_purpose() {
        let claims = AccessClaims {
            iss: "i".to_owned(),
            aud: "a".to_owned(),
            sub: "s".to_owned(),
            client_id: "c".to_owned(),
            scope: "system/*.rs".to_owned(),
            iat: 0,
            nbf: 0,
            exp: 0,
            jti: "j".to_owned(),
            user_kind: None,
            fhir_user: None,
            patient: None,
            encounter: None,
            purpose_of_use: None,
            break_glass: false,
            auditor: false,
        };
        assert_eq!(
            Access::from_claims(claims.clone(), None)
                .expect("granted")
                .purpose_of_use,
            "TREAT"
        );
        assert!(Access::from_claims(claims.clone(), Some("TREAT")).is_ok());
        assert!(matches!(
            Access::from_claims(claims, Some("HRESCH")),
            Err(Error::Forbidden(_))
        ));
    }
}
