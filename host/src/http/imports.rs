//! Contact import and export.
//!
//! `POST /v1/contacts/imports` takes a CSV file as the raw body (`text/csv`) or as the
//! `file` part of a `multipart/form-data` upload, with options `duplicates`
//! (`skip`, `update`, `merge`) and `mapping` (a JSON object from column name to `name`,
//! `phone`, `email`, `tags`, `fields.<key>`, `consent.<channel>` or `ignore`) as query parameters or form
//! parts. The body is streamed to disk, the header checked against the mapping, and a
//! background job started: `202 Accepted` with the job, whose progress is at
//! `GET /v1/contacts/imports/{id}` and rejected rows at `.../errors` (a CSV with line
//! numbers and reasons).
//!
//! `GET /v1/contacts/export?format=csv|jsonl` streams every contact matching the same
//! filters as the contact listing (`segment=<id>`, `tag=…`, …), page by page.

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::AppState;
use super::auth::Caller;
use super::contacts::query_filter;
use super::problem::ApiError;
use crate::csv_out::csv_line;
use crate::imports::{ImportJobSpec, MAX_UPLOAD_BYTES, export_headers, export_record, read_layout};
use crate::plans::Plan;
use crate::storage::{DuplicateStrategy, ImportJob, Role};

const WRITERS: [Role; 2] = [Role::Admin, Role::Agent];

pub(super) fn router() -> Router<AppState> {
    let upload = Router::new()
        .route("/v1/contacts/imports", post(start).get(list))
        .layer(DefaultBodyLimit::max(
            usize::try_from(MAX_UPLOAD_BYTES).unwrap_or(usize::MAX),
        ));
    Router::new()
        .merge(upload)
        .route("/v1/contacts/imports/{id}", get(show))
        .route("/v1/contacts/imports/{id}/errors", get(errors))
        .route("/v1/contacts/export", get(export))
}

fn invalid_import(detail: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-import",
        "Invalid import",
        detail,
    )
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        format!("no import `{id}`"),
    )
}

/// A job as the API shows it.
fn job_json(job: &ImportJob) -> Value {
    let mut view = json!(job);
    view["errors_url"] = if job.failed > 0 {
        json!(format!("/v1/contacts/imports/{}/errors", job.id))
    } else {
        Value::Null
    };
    view
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ImportOptions {
    duplicates: Option<String>,
    mapping: Option<String>,
}

fn parse_strategy(name: Option<&str>) -> Result<DuplicateStrategy, ApiError> {
    match name {
        None => Ok(DuplicateStrategy::Skip),
        Some(name) => DuplicateStrategy::parse(name).ok_or_else(|| {
            invalid_import(format!(
                "`duplicates` is `{name}`; use skip, update or merge"
            ))
        }),
    }
}

fn parse_mapping(text: Option<&str>) -> Result<Option<Map<String, Value>>, ApiError> {
    match text {
        None => Ok(None),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(mapping)) => Ok(Some(mapping)),
            _ => Err(invalid_import(
                "`mapping` must be a JSON object from column name to name, phone, email, tags, fields.<key>, consent.<channel> or ignore",
            )),
        },
    }
}

/// Streams `body` into `file`, refusing more than `MAX_UPLOAD_BYTES`.
async fn spool<S, E>(mut body: S, file: &mut tokio::fs::File) -> Result<u64, ApiError>
where
    S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut written = 0_u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|error| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "upload-failed",
                "Upload failed",
                format!("the upload broke off: {error}"),
            )
        })?;
        written += chunk.len() as u64;
        if written > MAX_UPLOAD_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "upload-too-large",
                "Upload too large",
                format!(
                    "an import file is at most {} MiB; split the file",
                    MAX_UPLOAD_BYTES / (1024 * 1024)
                ),
            ));
        }
        file.write_all(&chunk)
            .await
            .map_err(|error| ApiError::internal(&error))?;
    }
    file.flush()
        .await
        .map_err(|error| ApiError::internal(&error))?;
    Ok(written)
}

/// Receives the upload into `path`; the options given as form parts, if any.
async fn receive(
    request: Request,
    path: &std::path::Path,
    mut options: ImportOptions,
) -> Result<ImportOptions, ApiError> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|error| ApiError::internal(&error))?;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !content_type.starts_with("multipart/form-data") {
        let written = spool(request.into_body().into_data_stream(), &mut file).await?;
        if written == 0 {
            return Err(invalid_import(
                "the body is empty; send the CSV file as the body or as the `file` part of a multipart form",
            ));
        }
        return Ok(options);
    }
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|rejection| invalid_import(rejection.body_text()))?;
    let mut got_file = false;
    let form_error = |error: axum::extract::multipart::MultipartError| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed-multipart",
            "Malformed multipart body",
            error.body_text(),
        )
    };
    while let Some(field) = multipart.next_field().await.map_err(form_error)? {
        match field.name().unwrap_or("") {
            "file" => {
                spool(
                    field.map(|chunk| chunk.map_err(|error| error.body_text())),
                    &mut file,
                )
                .await?;
                got_file = true;
            }
            "duplicates" => options.duplicates = Some(field.text().await.map_err(form_error)?),
            "mapping" => options.mapping = Some(field.text().await.map_err(form_error)?),
            other => {
                return Err(invalid_import(format!(
                    "unknown form part `{other}`; send `file`, and optionally `duplicates` and `mapping`"
                )));
            }
        }
    }
    if !got_file {
        return Err(invalid_import("the form has no `file` part with the CSV"));
    }
    Ok(options)
}

async fn start(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    options: Result<Query<ImportOptions>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    caller.require(&WRITERS)?;
    let Query(options) = options.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "Invalid query",
            format!(
                "{}; import options are `duplicates` and `mapping`",
                rejection.body_text()
            ),
        )
    })?;
    // Check the query options before reading a possibly large body.
    parse_strategy(options.duplicates.as_deref())?;
    parse_mapping(options.mapping.as_deref())?;

    let importer = &state.importer;
    tokio::fs::create_dir_all(importer.dir())
        .await
        .map_err(|error| ApiError::internal(&error))?;
    let id = uuid::Uuid::now_v7().to_string();
    let upload = importer.upload_path(&id);
    let received = receive(request, &upload, options).await;
    let prepared = async {
        let options = received?;
        let strategy = parse_strategy(options.duplicates.as_deref())?;
        let mapping = parse_mapping(options.mapping.as_deref())?;
        let definitions = caller.db().custom_fields().await?;
        let path = upload.clone();
        let layout =
            tokio::task::spawn_blocking(move || read_layout(&path, mapping.as_ref(), &definitions))
                .await
                .map_err(|error| ApiError::internal(&error))?
                .map_err(invalid_import)?;
        Ok::<_, ApiError>((strategy, layout))
    }
    .await;
    let (strategy, layout) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => {
            let _ = tokio::fs::remove_file(&upload).await;
            return Err(error);
        }
    };
    let job = caller
        .db()
        .create_import(&id, strategy, &layout.mapping_json())
        .await?;
    let plan = Plan::of(&caller.tenant.plan);
    importer.spawn(ImportJobSpec {
        id: id.clone(),
        db: caller.db().clone(),
        file: upload,
        errors_file: importer.errors_path(&id),
        layout,
        strategy,
        country: caller.tenant.default_country.clone(),
        contact_limit: plan.contact_limit(),
        webhooks: state.webhooks.clone(),
    });
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/v1/contacts/imports/{id}"))],
        Json(job_json(&job)),
    )
        .into_response())
}

async fn list(Extension(caller): Extension<Caller>) -> Result<Json<Value>, ApiError> {
    let jobs = caller.db().list_imports(100).await?;
    Ok(Json(
        json!({ "data": jobs.iter().map(job_json).collect::<Vec<_>>() }),
    ))
}

async fn show(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = caller
        .db()
        .get_import(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(job_json(&job)))
}

/// Streams a file in 64 KiB chunks.
fn file_body(file: tokio::fs::File) -> Body {
    let chunks = futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buffer = vec![0_u8; 64 * 1024];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buffer)), Some(file)))
            }
            Err(error) => Some((Err(error), None)),
        }
    });
    Body::from_stream(chunks)
}

async fn errors(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = caller
        .db()
        .get_import(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let file = match tokio::fs::File::open(state.importer.errors_path(&job.id)).await {
        Ok(file) => Some(file),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(ApiError::internal(&error)),
    };
    let body = match file {
        Some(file) => file_body(file),
        // No rejected rows (yet): an error CSV with just its header.
        None => Body::from("line,error\n"),
    };
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"import-{id}-errors.csv\""),
            ),
        ],
        body,
    )
        .into_response())
}

/// Contacts per page while exporting.
const EXPORT_PAGE: u32 = 500;

async fn export(
    Extension(caller): Extension<Caller>,
    Query(mut params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let mut format = "csv".to_string();
    params.retain(|(key, value)| {
        if key == "format" {
            format.clone_from(value);
            false
        } else {
            true
        }
    });
    let jsonl = match format.as_str() {
        "csv" => false,
        "jsonl" => true,
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid-query",
                "Invalid query",
                format!("`format` is `{other}`; use csv or jsonl"),
            ));
        }
    };
    let (filter, _, _) = query_filter(&caller, &params).await?;
    let fields = caller.db().custom_fields().await?;
    let db = caller.db().clone();
    let header = if jsonl {
        Vec::new()
    } else {
        csv_line(&export_headers(&fields))
    };
    struct Cursor {
        after: Option<String>,
        done: bool,
        header: Vec<u8>,
    }
    let pages = futures::stream::unfold(
        Cursor {
            after: None,
            done: false,
            header,
        },
        move |mut cursor| {
            let (db, filter, fields) = (db.clone(), filter.clone(), fields.clone());
            async move {
                if cursor.done {
                    return None;
                }
                let page = match db
                    .list_contacts(&filter, cursor.after.as_deref(), EXPORT_PAGE)
                    .await
                {
                    Ok(page) => page,
                    Err(error) => {
                        // Headers are sent; a broken body is how the client learns.
                        tracing::error!(%error, "export stopped");
                        cursor.done = true;
                        return Some((Err(std::io::Error::other("export failed")), cursor));
                    }
                };
                let mut chunk = std::mem::take(&mut cursor.header);
                for contact in &page {
                    if jsonl {
                        if let Ok(line) = serde_json::to_vec(contact) {
                            chunk.extend_from_slice(&line);
                            chunk.push(b'\n');
                        }
                    } else {
                        chunk.extend_from_slice(&csv_line(&export_record(contact, &fields)));
                    }
                }
                cursor.done = page.len() < EXPORT_PAGE as usize;
                cursor.after = page.last().map(|contact| contact.id.clone());
                Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), cursor))
            }
        },
    );
    let (content_type, extension) = if jsonl {
        ("application/x-ndjson", "jsonl")
    } else {
        ("text/csv; charset=utf-8", "csv")
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"contacts.{extension}\""),
            ),
        ],
        Body::from_stream(pages),
    )
        .into_response())
}
