//! `fhir-gateway`: see `gateway::cli`.

/// mimalloc rather than glibc's malloc, whose locking and consolidation were a quarter of the
/// gateway's CPU under load (BENCHMARKS.md, "HL7 v2 over MLLP").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // The actix System on a multi-thread tokio runtime: the HTTP workers keep their own
    // single-thread runtimes, and everything the gateway spawns with `tokio::spawn` (the MLLP
    // connections, the audit writer, the sequencer, the anchoring worker, the consent follower,
    // the exporter) runs on every core instead of sharing the main thread.
    let runner = actix_web::rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("fhir-gateway")
            .build()
            .expect("the tokio runtime could not be built")
    });
    match runner.block_on(gateway::cli::run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fhir-gateway: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
