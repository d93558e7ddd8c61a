//! A contract-faithful fake of the OpenAI videos API (`/v1/videos`: Sora 2 and Sora 2 Pro,
//! also spoken by Azure AI Foundry and gateways such as LiteLLM), for the hosted-backend
//! tests: no test can reach the real service. Written from the public reference as
//! summarised, with sources, in `docs/research/openai-videos-api.md`:
//!
//! - `POST /v1/videos` (multipart/form-data or JSON: `model`, `prompt`, `seconds`, `size`, and
//!   an `input_reference` image part), `GET /v1/videos/{id}`, `GET /v1/videos/{id}/content`,
//!   `DELETE /v1/videos/{id}`, `GET /v1/videos` (`after`, `limit`, `order`);
//! - bearer auth (`Authorization: Bearer KEY`, or Azure's `api-key: KEY`);
//! - the Video object with every required field (nullable ones present as `null`), `seconds`
//!   and `size` as strings, statuses queued → in_progress (with `progress`) → completed or
//!   failed, and the `openai-poll-after-ms` hint;
//! - errors in the `{"error": {message, type, param, code}}` envelope; 429 with `Retry-After`
//!   (and `retry-after-ms`).
//!
//! Where the reference is silent the fake chooses, and says so: content before completion
//! is a 404; clips are 24 fps; references must be PNG (the real API also takes JPEG and WebP;
//! reelfarm sends PNG); only the `video` variant is served; a job may be deleted in any state
//! (cancel). It renders deterministic synthetic clips (a pattern from the prompt, panning; a
//! clip with a reference starts on it and pans from it) and can be told to answer 429 or
//! 5xx, to be slow, or to fail jobs. It counts what a test asserts: jobs created, every
//! request with its arrival time, and each create call's fields.

mod multipart;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use reelfarm_media::frame::RgbFrame;
use reelfarm_media::video::{EncodeSettings, Mp4Writer, Quality, decode_png};
use serde_json::{Value, json};

/// Frames per second of the fake's clips.
pub const FPS: u32 = 24;
const SECONDS: [&str; 3] = ["4", "8", "12"];
const SIZES: [&str; 4] = ["720x1280", "1280x720", "1024x1792", "1792x1024"];
/// Sizes `sora-2` renders; the larger two are Pro only.
const STANDARD_SIZES: [&str; 2] = ["720x1280", "1280x720"];

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub at: Instant,
    pub method: String,
    pub path: String,
    /// The status of an injected fault's answer (429, 500); `None`: served normally.
    pub fault: Option<u16>,
}

/// The fields of one accepted create call.
#[derive(Debug, Clone)]
pub struct CreateCall {
    pub id: String,
    pub model: String,
    pub prompt: String,
    pub seconds: String,
    pub size: String,
    /// The `input_reference` image's bytes, when one came.
    pub reference: Option<Vec<u8>>,
}

struct Job {
    call: CreateCall,
    created: Instant,
    created_at: u64,
    fails: bool,
    content: Option<Bytes>,
}

#[derive(Default)]
struct Faults {
    too_many: usize,
    retry_after_s: u64,
    server_errors: usize,
}

struct Shared {
    api_key: String,
    jobs: BTreeMap<String, Job>,
    /// Creation order, for listing.
    order: Vec<String>,
    created: usize,
    arrivals: Vec<Arrival>,
    calls: Vec<CreateCall>,
    faults: Faults,
    job_seconds: f64,
    fail_marker: Option<String>,
}

/// The fake server, serving until dropped. It runs on a runtime of its own thread, so a
/// test that blocks its own threads (waiting on a child process) never delays its answers
/// or the arrival times it records.
pub struct FakeVideos {
    pub url: String,
    pub api_key: String,
    shared: Arc<Mutex<Shared>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for FakeVideos {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FakeVideos {
    /// Serves on a free loopback port; jobs complete `job_seconds` after they are created.
    pub async fn start(job_seconds: f64) -> Result<FakeVideos> {
        let api_key = format!("sk-fake-{}", std::process::id());
        let shared = Arc::new(Mutex::new(Shared {
            api_key: api_key.clone(),
            jobs: BTreeMap::new(),
            order: Vec::new(),
            created: 0,
            arrivals: Vec::new(),
            calls: Vec::new(),
            faults: Faults::default(),
            job_seconds,
            fail_marker: None,
        }));
        let router = Router::new()
            .route("/v1/videos", get(list).post(create))
            .route("/v1/videos/{id}", get(retrieve).delete(delete))
            .route("/v1/videos/{id}/content", get(content))
            .layer(axum::middleware::from_fn_with_state(shared.clone(), gate))
            .with_state(shared.clone());
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("binding the fake videos API")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("the fake's runtime")?;
        std::thread::Builder::new()
            .name("fake-videos".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let serve = axum::serve(listener, router).with_graceful_shutdown(async {
                        let _ = stopped.await;
                    });
                    let _ = serve.await;
                });
            })
            .context("the fake's thread")?;
        Ok(FakeVideos {
            url,
            api_key,
            shared,
            stop: Some(stop),
        })
    }

    /// Jobs ever created (a second create for the same work is paying twice).
    pub fn created(&self) -> usize {
        lock(&self.shared).created
    }

    pub fn arrivals(&self) -> Vec<Arrival> {
        lock(&self.shared).arrivals.clone()
    }

    pub fn create_calls(&self) -> Vec<CreateCall> {
        lock(&self.shared).calls.clone()
    }

    /// The next `count` requests get 429 with `Retry-After: retry_after_s`.
    pub fn answer_too_many(&self, count: usize, retry_after_s: u64) {
        let mut shared = lock(&self.shared);
        shared.faults.too_many = count;
        shared.faults.retry_after_s = retry_after_s;
    }

    /// The next `count` requests get 500.
    pub fn answer_server_errors(&self, count: usize) {
        lock(&self.shared).faults.server_errors = count;
    }

    /// Jobs created from now on take this long (a slow service).
    pub fn set_job_seconds(&self, seconds: f64) {
        lock(&self.shared).job_seconds = seconds;
    }

    /// Jobs created from now on whose prompt contains `marker` fail.
    pub fn fail_jobs_with(&self, marker: &str) {
        lock(&self.shared).fail_marker = Some(marker.to_string());
    }
}

fn error(
    status: StatusCode,
    kind: &str,
    message: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    (status, Json(body)).into_response()
}

fn invalid(message: &str, param: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        message,
        Some(param),
        None,
    )
}

/// Every request: recorded, then faults, then auth.
async fn gate(
    State(shared): State<Arc<Mutex<Shared>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    {
        let mut state = lock(&shared);
        state.arrivals.push(Arrival {
            at: Instant::now(),
            method: method.to_string(),
            path: uri.path().to_string(),
            fault: None,
        });
        if state.faults.too_many > 0 {
            state.faults.too_many -= 1;
            if let Some(arrival) = state.arrivals.last_mut() {
                arrival.fault = Some(429);
            }
            let wait = state.faults.retry_after_s;
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                "Rate limit reached for requests",
                None,
                Some("rate_limit_exceeded"),
            );
            let headers = response.headers_mut();
            headers.insert("retry-after", wait.into());
            headers.insert("retry-after-ms", (wait * 1000).into());
            return response;
        }
        if state.faults.server_errors > 0 {
            state.faults.server_errors -= 1;
            if let Some(arrival) = state.arrivals.last_mut() {
                arrival.fault = Some(500);
            }
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "The server had an error while processing your request.",
                None,
                None,
            );
        }
        let bearer = headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        let azure = headers.get("api-key").and_then(|value| value.to_str().ok());
        if bearer.or(azure) != Some(state.api_key.as_str()) {
            return error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "Incorrect API key provided.",
                None,
                Some("invalid_api_key"),
            );
        }
    }
    next.run(request).await
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// The Video object of `job` as of now.
fn video(job: &Job, job_seconds: f64) -> Value {
    let elapsed = job.created.elapsed().as_secs_f64();
    let share = if job_seconds <= 0.0 {
        1.0
    } else {
        elapsed / job_seconds
    };
    let (status, progress) = match share {
        share if share >= 1.0 && job.fails => ("failed", 100),
        share if share >= 1.0 => ("completed", 100),
        share if share < 0.1 => ("queued", 0),
        share => ("in_progress", (share * 100.0) as u64),
    };
    let done = status == "completed" || status == "failed";
    let finished = done.then(|| job.created_at + job_seconds.ceil() as u64);
    json!({
        "id": job.call.id,
        "object": "video",
        "model": job.call.model,
        "status": status,
        "progress": progress,
        "created_at": job.created_at,
        "completed_at": finished,
        "expires_at": finished.map(|at| at + 3600),
        "prompt": job.call.prompt,
        "size": job.call.size,
        "seconds": job.call.seconds,
        "remixed_from_video_id": null,
        "error": (status == "failed").then(|| json!({
            "code": "video_generation_failed",
            "message": "Video generation failed.",
        })),
    })
}

/// A create call's text fields and reference image.
struct Form {
    text: BTreeMap<String, String>,
    reference: Option<Vec<u8>>,
}

/// Fields of a create call, from multipart or JSON.
fn fields(headers: &HeaderMap, body: &Bytes) -> Result<Form, Box<Response>> {
    let refuse = |message: &str, param: &str| Box::new(invalid(message, param));
    let content_type = headers
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with("application/json") {
        let doc: Value = serde_json::from_slice(body).map_err(|error| {
            refuse(
                &format!("We could not parse the JSON body: {error}"),
                "body",
            )
        })?;
        let object = doc
            .as_object()
            .ok_or_else(|| refuse("The body must be a JSON object.", "body"))?;
        if object.contains_key("input_reference") {
            return Err(refuse(
                "This fake takes input_reference as a multipart file part only.",
                "input_reference",
            ));
        }
        let text = object
            .iter()
            .filter_map(|(name, value)| Some((name.clone(), value.as_str()?.to_string())))
            .collect();
        return Ok(Form {
            text,
            reference: None,
        });
    }
    let parts = multipart::parse(content_type, body)
        .map_err(|message| refuse(&format!("Invalid multipart body: {message}"), "body"))?;
    let mut form = Form {
        text: BTreeMap::new(),
        reference: None,
    };
    for part in parts {
        if part.name == "input_reference" {
            form.reference = Some(part.body);
        } else {
            form.text
                .insert(part.name, String::from_utf8_lossy(&part.body).into_owned());
        }
    }
    Ok(form)
}

async fn create(
    State(shared): State<Arc<Mutex<Shared>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Form {
        text: fields,
        reference,
    } = match fields(&headers, &body) {
        Ok(form) => form,
        Err(response) => return *response,
    };
    let prompt = fields.get("prompt").cloned().unwrap_or_default();
    if prompt.is_empty() || prompt.chars().count() > 32_000 {
        return invalid("prompt must be between 1 and 32000 characters.", "prompt");
    }
    let model = fields
        .get("model")
        .cloned()
        .unwrap_or_else(|| "sora-2".into());
    let seconds = fields.get("seconds").cloned().unwrap_or_else(|| "4".into());
    if !SECONDS.contains(&seconds.as_str()) {
        return invalid(
            &format!("Invalid value: '{seconds}'. Supported values are: '4', '8', and '12'."),
            "seconds",
        );
    }
    let size = fields
        .get("size")
        .cloned()
        .unwrap_or_else(|| "720x1280".into());
    let pro = model.starts_with("sora-2-pro");
    if !SIZES.contains(&size.as_str()) || (!pro && !STANDARD_SIZES.contains(&size.as_str())) {
        return invalid(
            &format!(
                "Invalid value: '{size}'. {model} supports the sizes {}.",
                if pro {
                    SIZES.join(", ")
                } else {
                    STANDARD_SIZES.join(", ")
                }
            ),
            "size",
        );
    }
    let (width, height) = dimensions(&size);
    if let Some(bytes) = &reference {
        match decode_png(bytes) {
            Ok(picture) if (picture.width, picture.height) == (width, height) => {}
            Ok(_) => {
                return invalid(
                    "Inpaint image must match the requested width and height",
                    "input_reference",
                );
            }
            Err(_) => {
                return invalid(
                    "input_reference must be an image (this fake reads PNG).",
                    "input_reference",
                );
            }
        }
    }
    let mut state = lock(&shared);
    state.created += 1;
    let id = format!("video_{:032x}", state.created);
    let call = CreateCall {
        id: id.clone(),
        model,
        prompt,
        seconds,
        size,
        reference,
    };
    state.calls.push(call.clone());
    let fails = state
        .fail_marker
        .as_ref()
        .is_some_and(|marker| call.prompt.contains(marker.as_str()));
    let job = Job {
        call,
        created: Instant::now(),
        created_at: unix_now(),
        fails,
        content: None,
    };
    let body = video(&job, state.job_seconds);
    state.jobs.insert(id.clone(), job);
    state.order.push(id);
    Json(body).into_response()
}

fn not_found(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        &format!("Video with id '{id}' not found."),
        None,
        None,
    )
}

async fn retrieve(State(shared): State<Arc<Mutex<Shared>>>, Path(id): Path<String>) -> Response {
    let state = lock(&shared);
    match state.jobs.get(&id) {
        Some(job) => {
            let mut response = Json(video(job, state.job_seconds)).into_response();
            response
                .headers_mut()
                .insert("openai-poll-after-ms", 200.into());
            response
        }
        None => not_found(&id),
    }
}

async fn delete(State(shared): State<Arc<Mutex<Shared>>>, Path(id): Path<String>) -> Response {
    let mut state = lock(&shared);
    if state.jobs.remove(&id).is_none() {
        return not_found(&id);
    }
    state.order.retain(|kept| *kept != id);
    Json(json!({"id": id, "object": "video.deleted", "deleted": true})).into_response()
}

async fn list(
    State(shared): State<Arc<Mutex<Shared>>>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let state = lock(&shared);
    let limit = match query.get("limit").map(|limit| limit.parse::<usize>()) {
        None => 20,
        Some(Ok(limit)) if limit <= 100 => limit,
        Some(_) => return invalid("limit must be an integer between 0 and 100.", "limit"),
    };
    let mut ids: Vec<&String> = state.order.iter().collect();
    match query.get("order").map(String::as_str) {
        None | Some("desc") => ids.reverse(),
        Some("asc") => {}
        Some(_) => return invalid("order must be 'asc' or 'desc'.", "order"),
    }
    if let Some(after) = query.get("after") {
        match ids.iter().position(|id| *id == after) {
            Some(at) => ids.drain(..=at).for_each(drop),
            None => return not_found(after),
        }
    }
    let has_more = ids.len() > limit;
    ids.truncate(limit);
    let data: Vec<Value> = ids
        .iter()
        .map(|id| video(&state.jobs[*id], state.job_seconds))
        .collect();
    Json(json!({
        "object": "list",
        "data": data,
        "first_id": ids.first(),
        "last_id": ids.last(),
        "has_more": has_more,
    }))
    .into_response()
}

async fn content(
    State(shared): State<Arc<Mutex<Shared>>>,
    Path(id): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    if query
        .get("variant")
        .is_some_and(|variant| variant != "video")
    {
        return invalid("This fake serves only the video variant.", "variant");
    }
    let (call, ready) = {
        let state = lock(&shared);
        let Some(job) = state.jobs.get(&id) else {
            return not_found(&id);
        };
        if let Some(content) = &job.content {
            return ([("content-type", "video/mp4")], content.clone()).into_response();
        }
        (
            job.call.clone(),
            video(job, state.job_seconds)["status"] == "completed",
        )
    };
    if !ready {
        return error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "Video is not ready yet; wait for status 'completed'.",
            None,
            None,
        );
    }
    let rendered = match tokio::task::spawn_blocking(move || synthetic_clip(&call)).await {
        Ok(Ok(bytes)) => Bytes::from(bytes),
        _ => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "The fake could not render the clip.",
                None,
                None,
            );
        }
    };
    if let Some(job) = lock(&shared).jobs.get_mut(&id) {
        job.content = Some(rendered.clone());
    }
    ([("content-type", "video/mp4")], rendered).into_response()
}

fn dimensions(size: &str) -> (u32, u32) {
    let (width, height) = size.split_once('x').unwrap_or(("0", "0"));
    (width.parse().unwrap_or(0), height.parse().unwrap_or(0))
}

/// A deterministic clip: from the reference (when given) or a pattern coloured by the
/// prompt's hash, panning one pixel per frame.
pub fn synthetic_clip(call: &CreateCall) -> Result<Vec<u8>> {
    let (width, height) = dimensions(&call.size);
    let frames = call.seconds.parse::<u32>()? * FPS;
    let hue = call.prompt.bytes().fold(0u32, |hash, byte| {
        hash.wrapping_mul(31).wrapping_add(u32::from(byte))
    });
    let base = match &call.reference {
        Some(bytes) => decode_png(bytes)?,
        None => {
            let mut data = Vec::with_capacity((width * height * 3) as usize);
            for y in 0..height {
                for x in 0..width {
                    data.extend([
                        ((x * 255 / width.max(1)) as u8).wrapping_add(hue as u8),
                        ((y * 255 / height.max(1)) as u8).wrapping_add((hue >> 8) as u8),
                        (hue >> 16) as u8,
                    ]);
                }
            }
            RgbFrame::new(width, height, data)
        }
    };
    let settings = EncodeSettings {
        width,
        height,
        fps: FPS,
        quality: Quality::Intermediate,
    };
    let mut writer = Mp4Writer::new(Cursor::new(Vec::new()), settings)?;
    let row = (width * 3) as usize;
    for index in 0..frames {
        let shift = (index % width) as usize * 3;
        let mut data = Vec::with_capacity(base.data.len());
        for line in base.data.chunks_exact(row) {
            data.extend_from_slice(&line[shift..]);
            data.extend_from_slice(&line[..shift]);
        }
        writer.push(&RgbFrame::new(width, height, data))?;
    }
    Ok(writer.finish()?.into_inner())
}
