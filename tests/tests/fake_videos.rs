//! The fake OpenAI videos API holds to the contract the hosted backend will be written
//! against (`docs/research/openai-videos-api.md`): spoken to here the way a client must, with
//! hand-written HTTP/1.1 (multipart and JSON bodies, bearer and Azure auth), so what it
//! accepts, answers and refuses is pinned before any client exists.

use std::time::Duration;

use reelfarm_media::frame::RgbFrame;
use reelfarm_media::video::{Mp4Reader, encode_png};
use reelfarm_tests::fake_videos::{FPS, FakeVideos};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

async fn call(
    api: &FakeVideos,
    method: &str,
    path: &str,
    auth: Option<(&str, String)>,
    body: Option<(&str, Vec<u8>)>,
) -> Answer {
    let address = api.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    if let Some((name, value)) = &auth {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = match body {
        Some((content_type, bytes)) => {
            request.push_str(&format!(
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                bytes.len()
            ));
            bytes
        }
        None => Vec::new(),
    };
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(": "))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(key, value)| key.eq_ignore_ascii_case("transfer-encoding") && value == "chunked")
    {
        body = dechunk(&body);
    }
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|window| window == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line_end]).unwrap().trim(), 16)
            .unwrap();
        raw = &raw[line_end + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

fn bearer(api: &FakeVideos) -> Option<(&'static str, String)> {
    Some(("Authorization", format!("Bearer {}", api.api_key)))
}

/// A multipart create body: text fields, and the reference as a file part.
fn form(fields: &[(&str, &str)], reference: Option<&[u8]>) -> (&'static str, Vec<u8>) {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend(
            format!(
                "--BOUNDARY\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .bytes(),
        );
    }
    if let Some(bytes) = reference {
        body.extend(b"--BOUNDARY\r\nContent-Disposition: form-data; name=\"input_reference\"; filename=\"ref.png\"\r\nContent-Type: image/png\r\n\r\n");
        body.extend_from_slice(bytes);
        body.extend(b"\r\n");
    }
    body.extend(b"--BOUNDARY--\r\n");
    ("multipart/form-data; boundary=BOUNDARY", body)
}

fn picture(width: u32, height: u32) -> RgbFrame {
    let data = (0..width * height)
        .flat_map(|index| [(index % width) as u8, (index / width) as u8, 90])
        .collect();
    RgbFrame::new(width, height, data)
}

#[tokio::test]
async fn a_job_goes_from_queued_to_completed_and_its_clip_starts_on_the_reference() {
    let api = FakeVideos::start(0.6).await.unwrap();
    let reference = encode_png(&picture(1280, 720)).unwrap();
    let created = call(
        &api,
        "POST",
        "/v1/videos",
        bearer(&api),
        Some(form(
            &[
                ("model", "sora-2"),
                ("prompt", "a lighthouse at dusk"),
                ("seconds", "4"),
                ("size", "1280x720"),
            ],
            Some(&reference),
        )),
    )
    .await;
    assert_eq!(
        created.status,
        200,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let video = created.json();
    for field in [
        "id",
        "object",
        "model",
        "status",
        "progress",
        "created_at",
        "completed_at",
        "expires_at",
        "prompt",
        "size",
        "seconds",
        "remixed_from_video_id",
        "error",
    ] {
        assert!(video.get(field).is_some(), "{field} missing: {video}");
    }
    assert_eq!(video["object"], "video");
    assert_eq!(video["status"], "queued");
    assert_eq!(
        (video["seconds"].as_str(), video["size"].as_str()),
        (Some("4"), Some("1280x720"))
    );
    assert!(video["completed_at"].is_null() && video["error"].is_null());
    let id = video["id"].as_str().unwrap().to_string();
    let early = call(
        &api,
        "GET",
        &format!("/v1/videos/{id}/content"),
        bearer(&api),
        None,
    )
    .await;
    assert_eq!(early.status, 404, "no content before completion");

    let mut statuses = Vec::new();
    loop {
        let polled = call(&api, "GET", &format!("/v1/videos/{id}"), bearer(&api), None).await;
        assert_eq!(polled.header("openai-poll-after-ms"), Some("200"));
        let status = polled.json()["status"].as_str().unwrap().to_string();
        if statuses.last() != Some(&status) {
            statuses.push(status.clone());
        }
        if status == "completed" {
            assert_eq!(polled.json()["progress"], 100);
            assert!(polled.json()["completed_at"].is_u64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(statuses.first().map(String::as_str), Some("queued"));
    assert!(
        statuses.contains(&"in_progress".to_string()),
        "{statuses:?}"
    );

    let content = call(
        &api,
        "GET",
        &format!("/v1/videos/{id}/content?variant=video"),
        bearer(&api),
        None,
    )
    .await;
    assert_eq!(content.status, 200);
    assert_eq!(content.header("content-type"), Some("video/mp4"));
    let mut reader = Mp4Reader::open(content.body.clone()).unwrap();
    assert_eq!(reader.frame_count(), u64::from(4 * FPS));
    let first = reader.next_frame().unwrap().unwrap();
    assert_eq!((first.width, first.height), (1280, 720));
    let expected = picture(1280, 720);
    let error: f64 = first
        .data
        .iter()
        .zip(&expected.data)
        .map(|(a, b)| f64::from(a.abs_diff(*b)))
        .sum::<f64>()
        / first.data.len() as f64;
    assert!(
        error < 3.0,
        "the first frame is the reference (mean error {error})"
    );
    let again = call(
        &api,
        "GET",
        &format!("/v1/videos/{id}/content"),
        bearer(&api),
        None,
    )
    .await;
    assert_eq!(again.body, content.body, "deterministic");
    assert_eq!(api.created(), 1);
    assert_eq!(
        api.create_calls()[0].reference.as_deref(),
        Some(reference.as_slice())
    );
}

#[tokio::test]
async fn bad_requests_are_refused_in_the_error_envelope_naming_the_param() {
    let api = FakeVideos::start(0.0).await.unwrap();
    let unauthorised = call(&api, "GET", "/v1/videos", None, None).await;
    assert_eq!(unauthorised.status, 401);
    assert_eq!(unauthorised.json()["error"]["code"], "invalid_api_key");
    let azure = call(
        &api,
        "GET",
        "/v1/videos",
        Some(("api-key", api.api_key.clone())),
        None,
    )
    .await;
    assert_eq!(azure.status, 200, "Azure's api-key header");

    type Case<'a> = (&'a [(&'a str, &'a str)], Option<Vec<u8>>, &'a str);
    let cases: [Case; 4] = [
        (
            &[("model", "sora-2"), ("prompt", "x"), ("size", "1792x1024")],
            None,
            "size",
        ),
        (&[("prompt", "x"), ("seconds", "5")], None, "seconds"),
        (&[("model", "sora-2")], None, "prompt"),
        (
            &[("prompt", "x"), ("size", "1280x720")],
            Some(encode_png(&picture(64, 36)).unwrap()),
            "input_reference",
        ),
    ];
    for (fields, reference, param) in cases {
        let refused = call(
            &api,
            "POST",
            "/v1/videos",
            bearer(&api),
            Some(form(fields, reference.as_deref())),
        )
        .await;
        assert_eq!(refused.status, 400, "{param}");
        let envelope = refused.json();
        assert_eq!(envelope["error"]["param"], param, "{envelope}");
        assert_eq!(envelope["error"]["type"], "invalid_request_error");
        assert!(
            envelope["error"]["message"]
                .as_str()
                .is_some_and(|message| !message.is_empty())
        );
        assert!(
            envelope["error"].get("code").is_some(),
            "code is present (null)"
        );
    }
    let pro = call(
        &api,
        "POST",
        "/v1/videos",
        bearer(&api),
        Some(form(
            &[
                ("model", "sora-2-pro"),
                ("prompt", "x"),
                ("size", "1792x1024"),
            ],
            None,
        )),
    )
    .await;
    assert_eq!(pro.status, 200, "Pro renders the larger sizes");
    assert_eq!(api.created(), 1, "refused calls create nothing");
}

#[tokio::test]
async fn json_creates_list_pages_delete_and_faults_behave_as_told() {
    let api = FakeVideos::start(0.0).await.unwrap();
    let mut ids = Vec::new();
    for prompt in ["one", "two", "three"] {
        let body = serde_json::json!({"prompt": prompt, "model": "sora-2", "seconds": "4", "size": "720x1280"});
        let created = call(
            &api,
            "POST",
            "/v1/videos",
            bearer(&api),
            Some(("application/json", body.to_string().into_bytes())),
        )
        .await;
        assert_eq!(created.status, 200);
        ids.push(created.json()["id"].as_str().unwrap().to_string());
    }
    let page = call(&api, "GET", "/v1/videos?limit=2", bearer(&api), None)
        .await
        .json();
    assert_eq!(page["object"], "list");
    assert_eq!(page["has_more"], true);
    assert_eq!(page["first_id"], ids[2].as_str(), "newest first by default");
    let rest = call(
        &api,
        "GET",
        &format!(
            "/v1/videos?limit=2&after={}",
            page["last_id"].as_str().unwrap()
        ),
        bearer(&api),
        None,
    )
    .await
    .json();
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert_eq!(rest["has_more"], false);

    let deleted = call(
        &api,
        "DELETE",
        &format!("/v1/videos/{}", ids[0]),
        bearer(&api),
        None,
    )
    .await
    .json();
    assert_eq!(
        deleted,
        serde_json::json!({"id": ids[0], "object": "video.deleted", "deleted": true})
    );
    assert_eq!(
        call(
            &api,
            "GET",
            &format!("/v1/videos/{}", ids[0]),
            bearer(&api),
            None
        )
        .await
        .status,
        404
    );

    api.answer_too_many(1, 2);
    let limited = call(&api, "GET", "/v1/videos", bearer(&api), None).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("retry-after"), Some("2"));
    assert_eq!(limited.header("retry-after-ms"), Some("2000"));
    assert_eq!(limited.json()["error"]["code"], "rate_limit_exceeded");
    api.answer_server_errors(1);
    assert_eq!(
        call(&api, "GET", "/v1/videos", bearer(&api), None)
            .await
            .status,
        500
    );
    assert_eq!(
        call(&api, "GET", "/v1/videos", bearer(&api), None)
            .await
            .status,
        200
    );

    api.fail_jobs_with("doomed");
    let doomed = call(
        &api,
        "POST",
        "/v1/videos",
        bearer(&api),
        Some(form(&[("prompt", "a doomed shot")], None)),
    )
    .await
    .json();
    let polled = call(
        &api,
        "GET",
        &format!("/v1/videos/{}", doomed["id"].as_str().unwrap()),
        bearer(&api),
        None,
    )
    .await
    .json();
    assert_eq!(polled["status"], "failed");
    assert_eq!(polled["error"]["code"], "video_generation_failed");
    let arrivals = api.arrivals();
    assert!(arrivals.windows(2).all(|pair| pair[0].at <= pair[1].at));
    assert_eq!(
        arrivals
            .iter()
            .filter(|arrival| arrival.method == "POST")
            .count(),
        4
    );
    assert_eq!(api.created(), 4);
}
