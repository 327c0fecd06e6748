//! The FHIR R4 gateway: a FHIR REST server over PostgreSQL or SQLite.
//!
//! See ARCHITECTURE.md for the map. In short: [`rest`] is the HTTP face, [`interaction`]
//! holds one module per FHIR interaction, [`store`] is the database, [`resource`] handles
//! resource JSON, and [`error`] is the one door through which every failure becomes an
//! OperationOutcome. [`erasure`] removes a record for good (the `erase` command). [`auth`] is
//! the SMART on FHIR authorization server; [`access`] is who asks and what their token lets
//! them do, enforced by every interaction. [`hl7v2`] takes HL7 v2 messages (MLLP and
//! `$hl7v2`) and applies their translation as one transaction.

pub mod access;
pub mod anchoring;
pub mod audit;
pub mod auth;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod consent;
pub mod erasure;
pub mod error;
pub mod export;
pub mod hl7v2;
pub mod import;
pub mod interaction;
pub mod model;
pub mod resource;
pub mod rest;
pub mod secret_file;
pub mod sequencer;
pub mod startup;
pub mod store;
pub mod subset;
pub mod telemetry;
