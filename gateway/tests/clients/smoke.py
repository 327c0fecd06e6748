#!/usr/bin/env python3
"""Smoke test with independent FHIR clients: fhirpy creates, searches, pages, reads, updates
and deletes; fhir.resources (the exact R4 models) parses what the gateway answers.

    python3 smoke.py http://127.0.0.1:8080/fhir

Exits non-zero, with the reason, on the first failure. Run by gateway/tests/api/clients.rs.
"""
import sys
import uuid

import requests
from fhir.resources.bundle import Bundle
from fhir.resources.capabilitystatement import CapabilityStatement
from fhir.resources.operationoutcome import OperationOutcome
from fhir.resources.patient import Patient
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome as FhirpyOperationOutcome, ResourceNotFound


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"FAILED: {message}")


def main(base: str) -> None:
    client = SyncFHIRClient(base, extra_headers={"Accept": "application/fhir+json"})
    family = f"Smoke{uuid.uuid4().hex[:12]}"

    # the CapabilityStatement is a valid R4 resource
    metadata = requests.get(f"{base}/metadata", headers={"Accept": "application/fhir+json"}, timeout=30)
    check(metadata.status_code == 200, f"GET metadata: {metadata.status_code}")
    statement = CapabilityStatement.parse_obj(metadata.json())
    check(statement.fhirVersion == "4.0.1", f"fhirVersion {statement.fhirVersion}")

    # create
    ids = []
    for i in range(7):
        patient = client.resource(
            "Patient",
            name=[{"family": family, "given": [f"Given{i}"]}],
            gender="female" if i % 2 else "male",
            birthDate=f"19{50 + i}-0{1 + i % 9}-15",
            identifier=[{"system": "urn:smoke", "value": f"{family}-{i}"}],
        )
        patient.save()
        check(bool(patient.id), "a created Patient has an id")
        check(patient["meta"]["versionId"] == "1", "a created Patient is version 1")
        ids.append(patient.id)

    # search, paging through `next` links two at a time
    found = client.resources("Patient").search(family=family).limit(2).fetch_all()
    check(sorted(p.id for p in found) == sorted(ids), f"paged search found {len(found)} of 7")
    first_page = requests.get(
        f"{base}/Patient", params={"family": family, "_count": 2},
        headers={"Accept": "application/fhir+json"}, timeout=30,
    )
    bundle = Bundle.parse_obj(first_page.json())
    check(bundle.type == "searchset", "a search answers a searchset Bundle")
    check(any(link.relation == "next" for link in bundle.link), "the first page links to the next")
    check(client.resources("Patient").search(family=family).count() == 7, "_summary=count")
    females = client.resources("Patient").search(family=family, gender="female").fetch_all()
    check(len(females) == 3, f"AND of two parameters found {len(females)}")
    ordered = client.resources("Patient").search(family=family).sort("-birthdate").fetch_all()
    births = [p["birthDate"] for p in ordered]
    check(births == sorted(births, reverse=True), f"_sort=-birthdate gave {births}")

    # read, and parse with the R4 models
    for patient_id in ids:
        patient = client.reference("Patient", patient_id).to_resource()
        check(patient.id == patient_id, "read returns the resource asked for")
        Patient.parse_obj(patient.serialize())

    # update (a new version) and delete (then 410 Gone)
    patient = client.reference("Patient", ids[0]).to_resource()
    patient["active"] = True
    patient.save()
    check(patient["meta"]["versionId"] == "2", f"an update makes version 2, got {patient['meta']['versionId']}")
    client.reference("Patient", ids[1]).to_resource().delete()
    try:
        client.reference("Patient", ids[1]).to_resource()
        check(False, "a deleted Patient is not read")
    except (ResourceNotFound, FhirpyOperationOutcome):
        pass
    gone = requests.get(f"{base}/Patient/{ids[1]}", headers={"Accept": "application/fhir+json"}, timeout=30)
    check(gone.status_code == 410, f"a deleted Patient answers 410, got {gone.status_code}")
    OperationOutcome.parse_obj(gone.json())

    # an invalid resource is refused with an OperationOutcome that the R4 models accept
    bad = requests.post(
        f"{base}/Patient", json={"resourceType": "Patient", "birthDate": "not-a-date"},
        headers={"Content-Type": "application/fhir+json"}, timeout=30,
    )
    check(bad.status_code in (400, 422), f"an invalid Patient answers {bad.status_code}")
    outcome = OperationOutcome.parse_obj(bad.json())
    check(any("birthDate" in (i.expression or [""])[0] for i in outcome.issue), "the issue names birthDate")
    print(f"smoke test passed against {base}")


if __name__ == "__main__":
    main(sys.argv[1].rstrip("/"))
