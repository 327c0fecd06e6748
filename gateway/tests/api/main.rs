#![allow(unreachable_pub)]

//! Black-box tests of the HTTP API, against real PostgreSQL and against SQLite.
//! Every test runs on both backends (see `both!`).

mod helpers;

mod access;
mod anchoring;
mod approval;
mod audit;
mod auth;
mod authorize;
mod binding;
mod bundles;
mod client_kinds;
mod clients;
mod concurrency;
mod consent;
mod crud;
mod erasure;
mod errors;
mod examples;
mod export;
mod hl7v2;
mod import;
mod log;
mod patch;
mod profiles;
mod search;
mod search_modifiers;
mod second_opinion;
mod siwe;
mod smart_apps;
mod summary;
mod telemetry;
mod tls;
mod v2_bundles;
