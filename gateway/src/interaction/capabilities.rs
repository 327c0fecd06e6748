//! `capabilities` (http.html#capabilities): the CapabilityStatement at `GET [base]/metadata`,
//! listing exactly what this server does.

use fhir_profiles::Definitions;
use fhir_profiles::profile::{Profile, Profiles};
use fhir_profiles::search::{Registry, SearchParamType};
use serde_json::{Value, json};

use super::Context;

fn type_name(kind: SearchParamType) -> &'static str {
    match kind {
        SearchParamType::Number => "number",
        SearchParamType::Date => "date",
        SearchParamType::String => "string",
        SearchParamType::Token => "token",
        SearchParamType::Reference => "reference",
        SearchParamType::Composite => "composite",
        SearchParamType::Quantity => "quantity",
        SearchParamType::Uri => "uri",
        SearchParamType::Special => "special",
    }
}

/// The search parameter types this server can search on.
pub fn is_searchable(kind: SearchParamType) -> bool {
    !matches!(kind, SearchParamType::Special)
}

/// `rest.security`: SMART on FHIR, CORS, and the authorization server's endpoints in the
/// oauth-uris extension (from the same list as the discovery document).
fn security(ctx: &Context) -> Value {
    let uris: Vec<Value> = crate::auth::endpoints(&ctx.base_url, &ctx.config.auth)
        .into_iter()
        .map(|endpoint| json!({"url": endpoint.oauth_uris, "valueUri": endpoint.url}))
        .collect();
    json!({
        "cors": true,
        "service": [{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR"
            }],
            "text": "OAuth2 using SMART-on-FHIR profile (see .well-known/smart-configuration)"
        }],
        "extension": [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": uris
        }]
    })
}

/// Builds the CapabilityStatement.
pub fn capability_statement(ctx: &Context) -> Value {
    let registry = Registry::r4();
    let interactions = [
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history-instance",
        "history-type",
        "create",
        "search-type",
    ];
    let resources: Vec<Value> = Definitions::r4()
        .resource_types()
        .into_iter()
        .map(|resource_type| {
            let mut params: Vec<Value> = registry
                .for_type(resource_type)
                .filter(|p| {
                    is_searchable(p.kind)
                        && !matches!(p.code.as_str(), "_query" | "_list")
                        && crate::store::is_supported(resource_type, &p.code)
                })
                .map(|p| json!({"name": p.code, "definition": p.url, "type": type_name(p.kind)}))
                .collect();
            params.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            let includes: Vec<String> = registry
                .for_type(resource_type)
                .filter(|p| p.kind == SearchParamType::Reference)
                .map(|p| format!("{resource_type}:{}", p.code))
                .collect();
            let mut resource = json!({
                "type": resource_type,
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{resource_type}"),
                "interaction": interactions.iter().map(|code| json!({"code": code})).collect::<Vec<_>>(),
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "not-supported",
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "referencePolicy": ["literal", "logical"],
                "searchInclude": includes,
                "searchRevInclude": ["*"],
                "searchParam": params,
            });
            // the profiles a resource may claim and have checked
            let supported: Vec<&str> = Profiles::r4()
                .of_type(resource_type)
                .into_iter()
                .map(Profile::url)
                .collect();
            if !supported.is_empty() {
                resource["supportedProfile"] = json!(supported);
            }
            if resource_type == "Consent" {
                resource["interaction"] = json!([{"code": "read"}, {"code": "search-type"}]);
                resource["searchParam"] = json!([
                    {"name": "patient", "type": "reference", "definition": "http://hl7.org/fhir/SearchParameter/clinical-patient"},
                    {"name": "status", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Consent-status"}
                ]);
                resource["documentation"] = json!("a read-only projection of the patient's grants on chain (ConsentRegistry); search by patient");
                for key in ["versioning", "readHistory", "updateCreate", "conditionalCreate", "conditionalUpdate", "conditionalDelete", "searchInclude", "searchRevInclude"] {
                    if let Some(object) = resource.as_object_mut() {
                        object.remove(key);
                    }
                }
            }
            if resource_type == "Patient" {
                resource["operation"] = json!([{
                    "name": "everything",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                    "documentation": "GET Patient/[id]/$everything (_type, _since, _count): the Patient and its compartment, within the token's scopes and the patient's consent"
                }]);
            }
            resource
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-24",
        "publisher": "fhir-gateway",
        "kind": "instance",
        "software": {"name": "fhir-gateway", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "FHIR R4 interoperability gateway", "url": ctx.base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json", "application/fhir+json"],
        "rest": [{
            "mode": "server",
            "security": security(ctx),
            "resource": resources,
            "interaction": [
                {"code": "transaction"}, {"code": "batch"}, {"code": "search-system"}, {"code": "history-system"}
            ],
            "searchParam": [
                {"name": "_id", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id"},
                {"name": "_lastUpdated", "type": "date", "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"},
                {"name": "_tag", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-tag"},
                {"name": "_profile", "type": "uri", "definition": "http://hl7.org/fhir/SearchParameter/Resource-profile"},
                {"name": "_security", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-security"},
                {"name": "_text", "type": "string", "definition": "http://hl7.org/fhir/SearchParameter/DomainResource-text",
                 "documentation": "words of the narrative: words AND-ed, OR, parentheses, \"whole words\"; each word matches the words it starts"},
                {"name": "_content", "type": "string", "definition": "http://hl7.org/fhir/SearchParameter/Resource-content",
                 "documentation": "words of the narrative and of every string and markdown element, same syntax as _text"}
            ],
            "operation": [
                {"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"},
                {"name": "proof", "definition": "urn:fhir-gateway:OperationDefinition:proof",
                 "documentation": "GET [type]/[id]/$proof or [type]/[id]/_history/[vid]/$proof: the version's leaf in the anchored log (content hash, salt, log index, batch, RFC 9162 inclusion path, anchor); the Parameters layout is in the gateway's README"}
            ],
        }],
    })
}
