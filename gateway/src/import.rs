//! `fhir-gateway import`: FHIR NDJSON files (one resource per line) into the store.
//!
//! Every line is checked like a REST write (`interaction::check_body`: structure, the
//! profiles it claims, no `SUBSETTED` tag) and stored with update semantics: the resource
//! keeps its `id` (create-or-update by id, a new version if it exists), and each stored
//! version gets its log leaf in its own transaction, exactly as a `PUT` would
//! (`store::write_new_versions` for new resources, `interaction::store_version` for the others).
//!
//! **References.** A first pass reads every file and collects the `Type/id` each line
//! names, so references across files and lines resolve whatever the order. A relative
//! literal reference (`Type/id`, `Type/id/_history/n`) must name a resource of the import or
//! one the store holds (not deleted); otherwise the line is rejected (`--allow-dangling`
//! accepts it, as the REST API does). A conditional reference (`Type?criteria`) is rejected:
//! import does not resolve searches. Contained (`#id`), `urn:` and absolute references are
//! not checked. A target counts as "in the import" when a line names it, even if that line
//! is itself rejected: its own rejection says why.
//!
//! **Batches, resumption.** Lines are written in batches, one database transaction each,
//! which also moves the file's row in `import_file` (keyed by the SHA-256 of the file's
//! content: how many lines and bytes are done) and records the batch's rejections in
//! `import_rejection`. A killed import, run again, continues after the last committed batch:
//! nothing is written twice and nothing is lost. A file whose content was imported before is
//! skipped. Parsing and checking (CPU) of the next batch run on other threads while the
//! current one is written, and two files are imported at once, each on its own connection.
//!
//! **Rejections.** Each rejected line is a line of the error file:
//! `{"file": …, "line": n, "outcome": OperationOutcome}`, written at the end from the
//! database (so it is complete after a resumption too). `run` says how many were rejected;
//! the command exits with status 2 when any were.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use fhir_profiles::Json;
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Row};

use crate::error::Error;
use crate::interaction::{Context, Method, PreparedVersion, check_body, store_version};
use crate::model::{Instant, ResourceId, ResourceType};
use crate::resource;
use crate::store::search::{Bind, Sql};
use crate::store::{self, Backend, Store};

/// `(resourceType, id)`.
type Key = (String, String);

/// What the command was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub files: Vec<PathBuf>,
    /// Where rejected lines go (NDJSON).
    pub errors: PathBuf,
    /// Lines per database transaction.
    pub batch_size: usize,
    /// Accept references to resources neither in the import nor in the store.
    pub allow_dangling: bool,
    /// Draw a progress bar on standard error (when it is a terminal).
    pub progress: bool,
}

/// What an import did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// Files read (including those skipped because they were imported before).
    pub files: usize,
    /// Files whose content had been imported completely before (nothing done).
    pub skipped_files: usize,
    /// Resources stored by this run.
    pub accepted: u64,
    /// Lines rejected by this run.
    pub rejected: u64,
    /// Lines rejected in all the files, this run and earlier runs of the same files (the
    /// error file holds them all).
    pub rejected_in_files: u64,
    pub seconds: f64,
    pub errors_file: PathBuf,
}

/// One file of the import, after the first pass.
struct ImportFile {
    path: PathBuf,
    hash: String,
    lines: u64,
}

/// The progress of one file, as committed.
#[derive(Debug, Clone, Copy)]
struct Progress {
    next_line: u64,
    next_byte: u64,
    done: bool,
}

/// Imports `options.files` into the store. See the module documentation.
pub async fn run(store: &Store, ctx: &Context, options: &Options) -> anyhow::Result<Summary> {
    let started = std::time::Instant::now();
    anyhow::ensure!(options.batch_size > 0, "--batch-size must be at least 1");
    // 1. hash every file and collect the resources the import names
    let files_to_scan = options.files.clone();
    let (files, names) = tokio::task::spawn_blocking(move || scan(&files_to_scan))
        .await
        .context("the first pass stopped")??;
    let names = std::sync::Arc::new(names);
    let total_lines: u64 = files.iter().map(|f| f.lines).sum();
    let bar = progress_bar(options.progress, total_lines);
    let metrics = crate::telemetry::metrics();
    metrics.import_lines_total.record(total_lines, &[]);
    let mut summary = Summary {
        files: files.len(),
        errors_file: options.errors.clone(),
        ..Summary::default()
    };
    // 2. each file from where its committed progress ends, WRITERS files at a time (batches
    // of different files are independent: the reference check covers every file already)
    // the largest files first, so that the writers finish together rather than one of them
    // alone on the largest file at the end (the Synthea set: Observations are 42% of it)
    let mut by_size: Vec<&ImportFile> = files.iter().collect();
    by_size.sort_by_key(|file| std::cmp::Reverse(file.lines));
    let queue = std::sync::Mutex::new(std::collections::VecDeque::from(by_size));
    let next_file = || queue.lock().ok().and_then(|mut queue| queue.pop_front());
    let writers = (0..WRITERS).map(|_| async {
        let mut done = FileSummary::default();
        while let Some(file) = next_file() {
            let one = import_file(store, ctx, options, file, &names, &bar).await?;
            done.skipped_files += one.skipped_files;
            done.accepted += one.accepted;
            done.rejected += one.rejected;
        }
        anyhow::Ok(done)
    });
    for done in futures_util::future::try_join_all(writers).await? {
        summary.skipped_files += done.skipped_files;
        summary.accepted += done.accepted;
        summary.rejected += done.rejected;
    }
    bar.finish_and_clear();
    // 3. the error file, from what the database holds for these files
    summary.rejected_in_files = write_errors(store, &files, &options.errors).await?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Files imported at the same time, each by its own writer (a database connection) and
/// reader thread. Two: one writer leaves PostgreSQL's backend idle while it waits for the
/// next statement, and the machine this is measured on has two cores.
const WRITERS: usize = 2;

/// What the import of one file did.
#[derive(Debug, Default)]
struct FileSummary {
    skipped_files: usize,
    accepted: u64,
    rejected: u64,
}

/// Imports one file from where its committed progress ends, batch after batch.
async fn import_file(
    store: &Store,
    ctx: &Context,
    options: &Options,
    file: &ImportFile,
    names: &std::sync::Arc<HashSet<Key>>,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<FileSummary> {
    let mut summary = FileSummary::default();
    let progress = start_file(store, &file.hash).await?;
    bar.inc(progress.next_line.min(file.lines));
    if progress.done {
        summary.skipped_files += 1;
        return Ok(summary);
    }
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<anyhow::Result<Batch>>(1);
    let reader = {
        let (path, ctx, batch_size) = (file.path.clone(), ctx.clone(), options.batch_size);
        std::thread::spawn(move || read_batches(&path, progress, batch_size, &ctx, &sender))
    };
    while let Some(batch) = receiver.recv().await {
        let batch = batch?;
        let (accepted, rejected) = commit_batch(
            store,
            ctx,
            &file.hash,
            &batch,
            names,
            options.allow_dangling,
        )
        .await?;
        summary.accepted += accepted;
        summary.rejected += rejected;
        let metrics = crate::telemetry::metrics();
        metrics.import_resources.add(
            accepted,
            &[opentelemetry::KeyValue::new("outcome", "accepted")],
        );
        metrics.import_resources.add(
            rejected,
            &[opentelemetry::KeyValue::new("outcome", "rejected")],
        );
        bar.inc(batch.lines.len() as u64);
    }
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader of {} panicked", file.path.display()))?;
    finish_file(store, &file.hash).await?;
    Ok(summary)
}

fn progress_bar(enabled: bool, total: u64) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    // standard error, drawn only when it is a terminal (never in tests or pipes)
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{wide_bar}] {pos}/{len} lines ({per_sec}, {eta} left)",
    ) {
        bar.set_style(style);
    }
    bar
}

/// The first pass: each file's SHA-256 and line count, and every `(resourceType, id)` the
/// lines name (read cheaply: only those two members are kept).
fn scan(paths: &[PathBuf]) -> anyhow::Result<(Vec<ImportFile>, HashSet<Key>)> {
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        #[serde(rename = "resourceType", borrow)]
        resource_type: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        id: Option<std::borrow::Cow<'a, str>>,
    }
    let mut files = Vec::with_capacity(paths.len());
    let mut names = HashSet::new();
    let mut seen_hashes = HashSet::new();
    for path in paths {
        let mut reader = BufReader::with_capacity(
            1 << 20,
            File::open(path).with_context(|| format!("opening {}", path.display()))?,
        );
        let mut hasher = Sha256::new();
        let (mut line, mut lines) = (Vec::new(), 0u64);
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&line);
            lines += 1;
            let text = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&line);
            if let Ok(head) = serde_json::from_slice::<Head<'_>>(text)
                && let (Some(t), Some(id)) = (head.resource_type, head.id)
            {
                names.insert((t.into_owned(), id.into_owned()));
            }
        }
        let hash = hex::encode(hasher.finalize());
        anyhow::ensure!(
            seen_hashes.insert(hash.clone()),
            "{} has the same content as a file before it",
            path.display()
        );
        files.push(ImportFile {
            path: path.clone(),
            hash,
            lines,
        });
    }
    Ok((files, names))
}

/// A batch of lines, parsed and checked.
struct Batch {
    /// The line number after the batch's last line and the byte where it starts.
    next_line: u64,
    next_byte: u64,
    lines: Vec<Line>,
}

/// One line of a file (1-based number), checked: ready to store, or why not.
struct Line {
    number: u64,
    checked: Result<Checked, Error>,
}

/// A resource ready to be written as a first version, with what it refers to.
struct Checked {
    key: Key,
    /// The line's text, parsed again for the rare resource that exists already (its
    /// version is not the first).
    text: String,
    references: Vec<Key>,
    version: PreparedVersion,
}

/// Reads a file from `progress` on, in batches of `batch_size` lines, checking each batch on
/// all cores, and sends them to the writer. Runs on its own thread.
fn read_batches(
    path: &Path,
    progress: Progress,
    batch_size: usize,
    ctx: &Context,
    sender: &tokio::sync::mpsc::Sender<anyhow::Result<Batch>>,
) {
    let result = (|| -> anyhow::Result<()> {
        let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        file.seek(SeekFrom::Start(progress.next_byte))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let (mut line_number, mut byte) = (progress.next_line, progress.next_byte);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        loop {
            let mut raw = Vec::with_capacity(batch_size);
            for _ in 0..batch_size {
                let mut line = Vec::new();
                let n = reader
                    .read_until(b'\n', &mut line)
                    .with_context(|| format!("reading {}", path.display()))?;
                if n == 0 {
                    break;
                }
                line_number += 1;
                byte += n as u64;
                raw.push((line_number, line));
            }
            if raw.is_empty() {
                return Ok(());
            }
            let chunk = raw.len().div_ceil(threads);
            let lines: Vec<Line> = std::thread::scope(|scope| {
                let handles: Vec<_> = raw
                    .chunks(chunk)
                    .map(|part| {
                        scope.spawn(move || {
                            part.iter()
                                .filter(|(_, text)| !is_blank(text))
                                .map(|(number, text)| Line {
                                    number: *number,
                                    checked: check_line(ctx, text),
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                let mut lines = Vec::with_capacity(raw.len());
                for handle in handles {
                    // a panic while checking loses no line: the import stops before this batch
                    lines.extend(handle.join().map_err(|_| {
                        anyhow::anyhow!("checking lines of {} panicked", path.display())
                    })?);
                }
                anyhow::Ok(lines)
            })?;
            let batch = Batch {
                next_line: line_number,
                next_byte: byte,
                lines,
            };
            if sender.blocking_send(Ok(batch)).is_err() {
                return Ok(()); // the writer stopped
            }
        }
    })();
    if let Err(error) = result {
        let _ = sender.blocking_send(Err(error));
    }
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// Parses and checks one line as a REST `PUT` of the resource would, and prepares its
/// first version.
fn check_line(ctx: &Context, text: &[u8]) -> Result<Checked, Error> {
    let text = std::str::from_utf8(text)
        .map_err(|e| Error::Invalid(format!("the line is not valid UTF-8: {e}")))?
        .trim_end();
    let body = resource::parse_json(text.as_bytes(), ctx.config.limits.max_json_depth)?;
    let resource_type = resource::resource_type_of(&body)?;
    let id = match resource::id_of(&body) {
        Some(id) => ResourceId::parse(id)?,
        None => {
            return Err(Error::Invalid(
                "the resource has no id: an imported resource keeps its id, so it must have one"
                    .to_owned(),
            ));
        }
    };
    check_body(ctx, &body, &resource_type)?;
    let mut references = Vec::new();
    collect_references(&body, &mut references)?;
    let version = PreparedVersion::new(&resource_type, &id, None, body, Method::Put)?;
    Ok(Checked {
        key: (resource_type.as_str().to_owned(), id.as_str().to_owned()),
        text: text.to_owned(),
        references,
        version,
    })
}

/// The `Type/id` of every relative literal reference in a resource (`reference` members of
/// objects); a conditional reference is an error.
fn collect_references(value: &Json, into: &mut Vec<Key>) -> Result<(), Error> {
    match value {
        Json::Array(items) => {
            for item in items {
                collect_references(item, into)?;
            }
        }
        Json::Object(object) => {
            for entry in object.iter() {
                if entry.key.as_str() == "reference"
                    && let Json::String(reference) = &entry.value
                {
                    if let Some(key) = relative_reference(reference.as_str())? {
                        into.push(key);
                    }
                } else {
                    collect_references(&entry.value, into)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// `Type/id` of a relative literal reference; `None` for what import does not check
/// (contained, `urn:`, absolute URLs, other text).
fn relative_reference(reference: &str) -> Result<Option<Key>, Error> {
    if reference.starts_with('#') || reference.starts_with("urn:") || reference.contains("://") {
        return Ok(None);
    }
    if let Some((resource_type, _)) = reference.split_once('?')
        && ResourceType::parse(resource_type).is_ok()
    {
        return Err(Error::Unprocessable(format!(
            "the conditional reference {reference} cannot be imported: import does not resolve \
             searches; refer to the resource by Type/id"
        )));
    }
    let parts: Vec<&str> = reference.split('/').collect();
    let (resource_type, id) = match parts.as_slice() {
        [t, id] | [t, id, "_history", _] => (*t, *id),
        _ => return Ok(None),
    };
    if ResourceType::parse(resource_type).is_err() || ResourceId::parse(id).is_err() {
        return Ok(None);
    }
    Ok(Some((resource_type.to_owned(), id.to_owned())))
}

/// Creates the file's progress row if it has none; returns its committed progress.
async fn start_file(store: &Store, hash: &str) -> anyhow::Result<Progress> {
    store
        .write(async |conn| {
            sqlx::query(
                "INSERT INTO import_file (file_hash, next_line, next_byte, accepted, rejected, done, \
                 started_at, updated_at) VALUES ($1, 0, 0, 0, 0, 0, $2, $2) \
                 ON CONFLICT (file_hash) DO NOTHING",
            )
            .bind(hash)
            .bind(Instant::now().millis())
            .execute(&mut *conn)
            .await?;
            let row = sqlx::query(
                "SELECT next_line, next_byte, done FROM import_file WHERE file_hash = $1",
            )
            .bind(hash)
            .fetch_one(&mut *conn)
            .await?;
            Ok(Progress {
                next_line: u64::try_from(row.try_get::<i64, _>(0)?).unwrap_or(0),
                next_byte: u64::try_from(row.try_get::<i64, _>(1)?).unwrap_or(0),
                done: row.try_get::<i16, _>(2)? != 0,
            })
        })
        .await
        .map_err(|e| anyhow::anyhow!("recording the import of a file: {e}"))
}

async fn finish_file(store: &Store, hash: &str) -> anyhow::Result<()> {
    store
        .write(async |conn| {
            sqlx::query("UPDATE import_file SET done = 1, updated_at = $1 WHERE file_hash = $2")
                .bind(Instant::now().millis())
                .bind(hash)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("recording the end of a file's import: {e}"))
}

/// Rows per `IN (…)` list.
const KEYS_PER_STATEMENT: usize = 1000;

/// Writes a batch in one transaction: its resources, their leaves and index rows, its
/// rejections and the file's new progress. Returns (accepted, rejected).
async fn commit_batch(
    store: &Store,
    ctx: &Context,
    hash: &str,
    batch: &Batch,
    names: &HashSet<Key>,
    allow_dangling: bool,
) -> anyhow::Result<(u64, u64)> {
    store
        .write(async |conn| {
            // targets neither in the import nor (yet) known: does the store hold them?
            let unknown: HashSet<&Key> = batch
                .lines
                .iter()
                .filter_map(|l| l.checked.as_ref().ok())
                .flat_map(|c| &c.references)
                .filter(|key| !names.contains(*key))
                .collect();
            let stored = if allow_dangling || unknown.is_empty() {
                HashSet::new()
            } else {
                existing(conn, unknown.into_iter(), false).await?
            };
            let mut rejections: Vec<(u64, serde_json::Value)> = Vec::new();
            let mut ready: Vec<&Checked> = Vec::with_capacity(batch.lines.len());
            for line in &batch.lines {
                match &line.checked {
                    Err(error) => rejections.push((line.number, error.operation_outcome())),
                    Ok(checked) => {
                        let dangling = checked
                            .references
                            .iter()
                            .find(|key| !names.contains(*key) && !stored.contains(*key));
                        match dangling {
                            Some((t, id)) if !allow_dangling => rejections.push((
                                line.number,
                                Error::Unprocessable(format!(
                                    "the reference {t}/{id} names a resource that is neither \
                                     in the import nor stored"
                                ))
                                .operation_outcome(),
                            )),
                            _ => ready.push(checked),
                        }
                    }
                }
            }
            // the resources that exist are locked and get a next version, one by one; so do
            // later lines of the batch with the id of an earlier one
            let present = existing(conn, ready.iter().map(|c| &c.key), true).await?;
            let mut firsts = HashSet::with_capacity(ready.len());
            let (new, later): (Vec<&Checked>, Vec<&Checked>) = ready
                .iter()
                .copied()
                .partition(|c| !present.contains(&c.key) && firsts.insert(&c.key));
            let writes: Vec<store::VersionWrite<'_>> =
                new.iter().map(|c| c.version.write()).collect();
            store::write_new_versions(conn, &writes).await?;
            let mut touched: Vec<crate::audit::Touched> = writes
                .iter()
                .map(|w| crate::audit::Touched::written(w.resource_type, w.id, w.version_id))
                .collect();
            for checked in &later {
                let (resource_type, id) = &checked.key;
                let body = resource::parse_json(
                    checked.text.as_bytes(),
                    ctx.config.limits.max_json_depth,
                )?;
                let (resource_type, id) =
                    (ResourceType::parse(resource_type)?, ResourceId::parse(id)?);
                let current =
                    store::current_for_update(conn, resource_type.as_str(), id.as_str()).await?;
                let outcome = store_version(
                    conn,
                    ctx,
                    &resource_type,
                    &id,
                    current.as_ref(),
                    body,
                    Method::Put,
                )
                .await?;
                touched.extend(outcome.touched);
            }
            // what the batch wrote is on record with it (crate::audit)
            if ctx.config.audit.enabled && !touched.is_empty() {
                crate::audit::store_import(conn, ctx, &touched)
                    .await
                    .map_err(Error::Internal)?;
            }
            record_progress(conn, hash, batch, ready.len() as u64, &rejections).await?;
            Ok((ready.len() as u64, rejections.len() as u64))
        })
        .await
        .map_err(|e| anyhow::anyhow!("writing a batch: {e}"))
}

/// Which of `keys` the store holds: current and not deleted (`for_update`: any, locked until
/// the transaction ends on PostgreSQL).
///
/// One statement per resource type (and per [`KEYS_PER_STATEMENT`] ids), `resource_type = $1
/// AND id IN (…)`, so that it is a lookup of the `UNIQUE (resource_type, id)` index rather
/// than a scan of the table. The keys are sorted first and a locking statement locks in
/// `rkey` order, so two imports lock the rows they share in the same order. Only that one
/// sorts: SQLite (nothing to lock) without statistics would rather walk
/// `(resource_type, rkey)` over every row of the type than sort a few rows.
async fn existing<'k>(
    conn: &mut AnyConnection,
    keys: impl Iterator<Item = &'k Key>,
    for_update: bool,
) -> Result<HashSet<Key>, Error> {
    let mut keys: Vec<&Key> = keys.collect();
    keys.sort_unstable();
    keys.dedup();
    let mut found = HashSet::new();
    let lock = match (for_update, Backend::of(conn)) {
        (true, Backend::Postgres) => " ORDER BY rkey FOR UPDATE",
        _ => "",
    };
    let live = if for_update { "" } else { " AND deleted = 0" };
    for same_type in keys.chunk_by(|a, b| a.0 == b.0) {
        let resource_type = &same_type[0].0;
        for chunk in same_type.chunks(KEYS_PER_STATEMENT) {
            let mut sql = Sql::default();
            let type_param = sql.bind(Bind::Text(resource_type.clone()));
            let ids: Vec<String> = chunk
                .iter()
                .map(|(_, id)| sql.bind(Bind::Text(id.clone())))
                .collect();
            sql.text = format!(
                "SELECT id FROM resource WHERE resource_type = {type_param} AND id IN ({}){live}{lock}",
                ids.join(", ")
            );
            for row in sql.query().fetch_all(&mut *conn).await? {
                found.insert((resource_type.clone(), row.try_get(0)?));
            }
        }
    }
    Ok(found)
}

/// Moves the file's progress past the batch and records its rejections (in the batch's
/// transaction).
async fn record_progress(
    conn: &mut AnyConnection,
    hash: &str,
    batch: &Batch,
    accepted: u64,
    rejections: &[(u64, serde_json::Value)],
) -> Result<(), Error> {
    let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    sqlx::query(
        "UPDATE import_file SET next_line = $1, next_byte = $2, accepted = accepted + $3, \
         rejected = rejected + $4, updated_at = $5 WHERE file_hash = $6",
    )
    .bind(as_i64(batch.next_line))
    .bind(as_i64(batch.next_byte))
    .bind(as_i64(accepted))
    .bind(as_i64(rejections.len() as u64))
    .bind(Instant::now().millis())
    .bind(hash)
    .execute(&mut *conn)
    .await?;
    for chunk in rejections.chunks(KEYS_PER_STATEMENT) {
        let mut sql = Sql::default();
        let rows: Vec<String> = chunk
            .iter()
            .map(|(line, outcome)| {
                format!(
                    "({}, {}, {})",
                    sql.bind(Bind::Text(hash.to_owned())),
                    sql.bind(Bind::Int(as_i64(*line))),
                    sql.bind(Bind::Text(outcome.to_string())),
                )
            })
            .collect();
        sql.text = format!(
            "INSERT INTO import_rejection (file_hash, line, outcome) VALUES {}",
            rows.join(", ")
        );
        sql.query().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Writes every rejection recorded for `files` to `path` (NDJSON, in file and line order);
/// returns how many.
async fn write_errors(store: &Store, files: &[ImportFile], path: &Path) -> anyhow::Result<u64> {
    let mut out = std::io::BufWriter::new(
        File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut conn = store.reader().await?;
    let mut count = 0;
    for file in files {
        let rows = sqlx::query(
            "SELECT line, outcome FROM import_rejection WHERE file_hash = $1 ORDER BY line",
        )
        .bind(&file.hash)
        .fetch_all(&mut *conn)
        .await?;
        for row in rows {
            let line: i64 = row.try_get(0)?;
            let outcome: String = row.try_get(1)?;
            let outcome: serde_json::Value = serde_json::from_str(&outcome)?;
            let record = serde_json::json!({
                "file": file.path.display().to_string(),
                "line": line,
                "outcome": outcome,
            });
            writeln!(out, "{record}")?;
            count += 1;
        }
    }
    out.flush()?;
    Ok(count)
}
