//! `fhir-gateway`: see `gateway::cli`.

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    match gateway::cli::run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fhir-gateway: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
