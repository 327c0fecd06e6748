//! ADT A40 (merge patient, patient identifier list): the translator's Bundle links the two
//! Patients (`replaced-by` on the merged one, `replaces` on the survivor); here, in the same
//! database transaction, every stored resource that refers to the merged Patient is moved
//! to the survivor: a new version of each, through the update interaction (so checked,
//! within the actor's scopes, indexed and logged like any update).
//!
//! The resources found are those whose reference to the merged Patient a search parameter
//! indexes (`idx_reference`: subject, patient, performer, ... of every type); the two
//! Patients themselves keep their links. AuditEvents are not moved: they record who
//! accessed the merged Patient's record before the merge, and nobody rewrites the trail
//! (an update of one is refused, which would fail the merge).

use fhir_profiles::Json;
use sqlx::{AnyConnection, Row as _};

use crate::access::Access;
use crate::error::{Error, Result};
use crate::interaction::search::matching_ids;
use crate::interaction::{Checked, Context, update};
use crate::model::{ResourceId, ResourceType};
use crate::store;

/// How many resources were moved to the survivor.
pub(crate) async fn move_references(
    conn: &mut AnyConnection,
    ctx: &Context,
    access: &Access,
    merge: &fhir_profiles::v2::Merge,
) -> Result<usize> {
    let patient = ResourceType::parse("Patient")?;
    let survivor = one_patient(conn, ctx, access, &patient, &merge.survivor, "survivor").await?;
    let merged = one_patient(conn, ctx, access, &patient, &merge.merged, "merged patient").await?;
    if survivor == merged {
        return Err(Error::Unprocessable(
            "the A40 merges a patient into itself (PID-3 and MRG-1 name the same Patient)"
                .to_owned(),
        ));
    }
    let referring: Vec<(String, String)> = sqlx::query(
        "SELECT DISTINCT r.resource_type, r.id FROM idx_reference x \
         JOIN resource r ON r.rkey = x.rkey \
         WHERE x.target_type = 'Patient' AND x.target_id = $1 AND r.deleted = 0 \
         AND x.rtype <> 'AuditEvent' \
         ORDER BY r.resource_type, r.id",
    )
    .bind(merged.as_str())
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|row| Ok((row.try_get("resource_type")?, row.try_get("id")?)))
    .collect::<Result<_, sqlx::Error>>()?;
    let from = format!("Patient/{}", merged.as_str());
    let to = format!("Patient/{}", survivor.as_str());
    let from_absolute = ctx.resource_url("Patient", merged.as_str());
    let mut moved = 0;
    for (resource_type, id) in referring {
        if resource_type == "Patient" && (id == survivor.as_str() || id == merged.as_str()) {
            continue;
        }
        let Some((_, Some(body))) =
            store::current_with_body_for_update(conn, &resource_type, &id).await?
        else {
            continue;
        };
        let mut resource = crate::resource::parse_json(body.as_bytes(), usize::MAX)?;
        if !rewrite(&mut resource, &from, &from_absolute, &to) {
            continue;
        }
        let resource_type = ResourceType::parse(&resource_type)?;
        update::update(
            conn,
            ctx,
            access,
            &resource_type,
            &ResourceId::parse(&id)?,
            Checked::new(ctx, resource, &resource_type)?,
            None,
        )
        .await?;
        moved += 1;
    }
    Ok(moved)
}

/// The one Patient a PID-3 key (`system|value`) identifies.
async fn one_patient(
    conn: &mut AnyConnection,
    ctx: &Context,
    access: &Access,
    patient: &ResourceType,
    key: &str,
    role: &str,
) -> Result<ResourceId> {
    let criteria: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("identifier", key)
        .finish();
    let found = matching_ids(conn, ctx, access, patient, &criteria, 2).await?;
    match found.as_slice() {
        [id] => Ok(id.clone()),
        [] => Err(Error::Unprocessable(format!(
            "the A40's {role} matches no Patient"
        ))),
        _ => Err(Error::PreconditionFailed(format!(
            "the A40's {role} matches more than one Patient"
        ))),
    }
}

/// Points every `reference` to `from` (relative, or absolute on this server) at `to`;
/// whether anything changed.
fn rewrite(value: &mut Json, from: &str, from_absolute: &str, to: &str) -> bool {
    let mut changed = false;
    match value {
        Json::Object(object) => {
            for (key, member) in object.iter_mut() {
                match member {
                    Json::String(text)
                        if key.as_str() == "reference"
                            && (text.as_str() == from || text.as_str() == from_absolute) =>
                    {
                        *text = to.into();
                        changed = true;
                    }
                    other => changed |= rewrite(other, from, from_absolute, to),
                }
            }
        }
        Json::Array(items) => {
            for item in items.iter_mut() {
                changed |= rewrite(item, from, from_absolute, to);
            }
        }
        _ => {}
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use json_syntax::Parse as _;

    #[test]
    fn references_to_the_merged_patient_are_moved() {
        let (mut resource, _) = Json::parse_str(
            r#"{"resourceType":"Encounter","subject":{"reference":"Patient/old"},"participant":[{"individual":{"reference":"Practitioner/old"}}],"basedOn":[{"reference":"http://gw/fhir/Patient/old"}],"note":"Patient/old"}"#,
        )
        .expect("json");
        assert!(rewrite(
            &mut resource,
            "Patient/old",
            "http://gw/fhir/Patient/old",
            "Patient/new"
        ));
        let text = crate::resource::to_text(&resource);
        assert!(
            text.contains(r#""subject":{"reference":"Patient/new"}"#),
            "{text}"
        );
        assert!(text.contains(r#""reference":"Practitioner/old""#), "{text}");
        assert!(text.contains(r#"[{"reference":"Patient/new"}]"#), "{text}");
        assert!(text.contains(r#""note":"Patient/old""#), "{text}");
        assert!(!rewrite(
            &mut resource,
            "Patient/old",
            "http://gw/fhir/Patient/old",
            "Patient/new"
        ));
    }
}
