#![allow(unreachable_pub)]

//! Black-box tests of the HTTP API, against real PostgreSQL and against SQLite.
//! Every test runs on both backends (see `both!`).

mod helpers;

mod bundles;
mod crud;
mod errors;
mod examples;
mod search;
mod second_opinion;
