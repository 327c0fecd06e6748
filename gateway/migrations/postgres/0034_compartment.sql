-- The Patient whose compartment a resource's current version is in, on its own row, so that
-- a consent check (store::consent::condition) compares a column instead of probing the
-- resource's reference rows in idx_reference (BENCHMARKS.md, "Consent"). Written with every
-- version from the same index entries as those rows (store::index::compartment_of):
--   ''    in no Patient's compartment through the type's compartment parameters (a
--         Patient is still in its own, by id; a deletion and an erased resource have no
--         index rows, so none);
--   an id in exactly that Patient's;
--   NULL  several Patients, or a Patient reference without an id: a check then probes
--         idx_reference as before.
ALTER TABLE resource ADD COLUMN compartment TEXT COLLATE "C";

-- The rows written before this column get it from their reference rows, as the check would
-- find them: the Patient references through the compartment parameters of the R4 Patient
-- CompartmentDefinition (fhir-profiles/r4/compartment-patient.json; a unit test,
-- store::index::tests, holds this list to it). One pass over `resource`, once.
WITH p (rtype, param) AS (VALUES
  ('Account', 'subject'),
  ('AdverseEvent', 'subject'),
  ('AllergyIntolerance', 'patient'), ('AllergyIntolerance', 'recorder'), ('AllergyIntolerance', 'asserter'),
  ('Appointment', 'actor'),
  ('AppointmentResponse', 'actor'),
  ('AuditEvent', 'patient'),
  ('Basic', 'patient'), ('Basic', 'author'),
  ('BodyStructure', 'patient'),
  ('CarePlan', 'patient'), ('CarePlan', 'performer'),
  ('CareTeam', 'patient'), ('CareTeam', 'participant'),
  ('ChargeItem', 'subject'),
  ('Claim', 'patient'), ('Claim', 'payee'),
  ('ClaimResponse', 'patient'),
  ('ClinicalImpression', 'subject'),
  ('Communication', 'subject'), ('Communication', 'sender'), ('Communication', 'recipient'),
  ('CommunicationRequest', 'subject'), ('CommunicationRequest', 'sender'), ('CommunicationRequest', 'recipient'), ('CommunicationRequest', 'requester'),
  ('Composition', 'subject'), ('Composition', 'author'), ('Composition', 'attester'),
  ('Condition', 'patient'), ('Condition', 'asserter'),
  ('Consent', 'patient'),
  ('Coverage', 'policy-holder'), ('Coverage', 'subscriber'), ('Coverage', 'beneficiary'), ('Coverage', 'payor'),
  ('CoverageEligibilityRequest', 'patient'),
  ('CoverageEligibilityResponse', 'patient'),
  ('DetectedIssue', 'patient'),
  ('DeviceRequest', 'subject'), ('DeviceRequest', 'performer'),
  ('DeviceUseStatement', 'subject'),
  ('DiagnosticReport', 'subject'),
  ('DocumentManifest', 'subject'), ('DocumentManifest', 'author'), ('DocumentManifest', 'recipient'),
  ('DocumentReference', 'subject'), ('DocumentReference', 'author'),
  ('Encounter', 'patient'),
  ('EnrollmentRequest', 'subject'),
  ('EpisodeOfCare', 'patient'),
  ('ExplanationOfBenefit', 'patient'), ('ExplanationOfBenefit', 'payee'),
  ('FamilyMemberHistory', 'patient'),
  ('Flag', 'patient'),
  ('Goal', 'patient'),
  ('Group', 'member'),
  ('ImagingStudy', 'patient'),
  ('Immunization', 'patient'),
  ('ImmunizationEvaluation', 'patient'),
  ('ImmunizationRecommendation', 'patient'),
  ('Invoice', 'subject'), ('Invoice', 'patient'), ('Invoice', 'recipient'),
  ('List', 'subject'), ('List', 'source'),
  ('MeasureReport', 'patient'),
  ('Media', 'subject'),
  ('MedicationAdministration', 'patient'), ('MedicationAdministration', 'performer'), ('MedicationAdministration', 'subject'),
  ('MedicationDispense', 'subject'), ('MedicationDispense', 'patient'), ('MedicationDispense', 'receiver'),
  ('MedicationRequest', 'subject'),
  ('MedicationStatement', 'subject'),
  ('MolecularSequence', 'patient'),
  ('NutritionOrder', 'patient'),
  ('Observation', 'subject'), ('Observation', 'performer'),
  ('Patient', 'link'),
  ('Person', 'patient'),
  ('Procedure', 'patient'), ('Procedure', 'performer'),
  ('Provenance', 'patient'),
  ('QuestionnaireResponse', 'subject'), ('QuestionnaireResponse', 'author'),
  ('RelatedPerson', 'patient'),
  ('RequestGroup', 'subject'), ('RequestGroup', 'participant'),
  ('ResearchSubject', 'individual'),
  ('RiskAssessment', 'subject'),
  ('Schedule', 'actor'),
  ('ServiceRequest', 'subject'), ('ServiceRequest', 'performer'),
  ('Specimen', 'subject'),
  ('SupplyDelivery', 'patient'),
  ('SupplyRequest', 'subject'),
  ('VisionPrescription', 'patient'))
UPDATE resource SET compartment = (
  SELECT CASE
    WHEN COUNT(*) = 0 THEN ''
    WHEN COUNT(x.target_id) = COUNT(*) AND MIN(x.target_id) = MAX(x.target_id) THEN MIN(x.target_id)
  END
  FROM idx_reference x JOIN p ON p.rtype = x.rtype AND p.param = x.param
  WHERE x.rkey = resource.rkey AND x.target_type = 'Patient');
