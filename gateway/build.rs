//! `sqlx::migrate!` embeds `migrations/` at compile time; a new migration file changes no
//! Rust source, so without this cargo would not rebuild the crate to embed it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
