//! `reelfarm download`: a finished sequence's video or report through the scheduler's
//! `ReadOutput` stream, into OUTPUT.partial and then renamed. A broken stream resumes where
//! it stopped (at the leader, after a failover), and the whole file is checked against the
//! CRC32C the stitch recorded when it wrote the output.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reelfarm_common::leader::is_transient;
use reelfarm_common::pb;
use reelfarm_common::pb::sequence_service_client::SequenceServiceClient;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tonic::{Code, Status};

use super::{Client, DownloadArgs};
use crate::input::check_output;
use crate::outputs::{deliveries, retarget_timeline, write_atomically};

pub(super) async fn download(args: DownloadArgs) -> Result<()> {
    if args.report {
        let output = args
            .output
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.report.json", args.id)));
        let mut client = Client::connect(&args.scheduler).await?;
        let bytes = download_one(&mut client, &args.id, pb::OutputKind::Report, &output).await?;
        println!(
            "wrote {} ({:.1} KiB, the report of {})",
            output.display(),
            bytes as f64 / 1024.0,
            args.id
        );
        return Ok(());
    }
    let video = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.mp4", args.id)));
    let mut client = Client::connect(&args.scheduler).await?;
    for delivery in deliveries(&args.id, &video) {
        check_output(&delivery.path)?;
    }
    for delivery in deliveries(&args.id, &video) {
        let bytes = download_one(&mut client, &args.id, delivery.kind, &delivery.path).await?;
        if delivery.kind == pb::OutputKind::Timeline {
            let stored = std::fs::read(&delivery.path)
                .with_context(|| format!("reading {}", delivery.path.display()))?;
            write_atomically(&delivery.path, &retarget_timeline(&stored, &video)?)?;
        }
        println!(
            "wrote {} ({:.1} MiB, the {} of {})",
            delivery.path.display(),
            bytes as f64 / f64::from(1 << 20),
            delivery.what,
            args.id
        );
    }
    Ok(())
}

/// One output into `output` through `output.partial`, restarted once at the leader.
async fn download_one(
    client: &mut Client,
    id: &str,
    kind: pb::OutputKind,
    output: &Path,
) -> Result<u64> {
    check_output(output)?;
    let mut partial = output.to_path_buf().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let bytes = match fetch_with_retry(client, id, kind, &partial).await {
        Ok(bytes) => bytes,
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            return Err(error);
        }
    };
    std::fs::rename(&partial, output)
        .with_context(|| format!("moving {} into place", output.display()))?;
    Ok(bytes)
}

/// Times a broken stream is resumed before the download gives up.
const RESUMES: usize = 5;

async fn fetch_with_retry(
    client: &mut Client,
    id: &str,
    kind: pb::OutputKind,
    partial: &Path,
) -> Result<u64> {
    let what = format!("downloading {id}");
    let mut offset = 0;
    let mut resumes = 0;
    let (written, crc32c) = loop {
        match fetch(client.grpc.clone(), id, kind, partial, offset).await? {
            Fetched::Done { written, crc32c } => break (written, crc32c),
            Fetched::Broken { written, status } if is_transient(&status) && resumes < RESUMES => {
                resumes += 1;
                tracing::debug!(scheduler = %client.url, written, error = %status.message(), "download resumes");
                offset = written;
                client.reconnect(client.connect_timeout).await?;
            }
            Fetched::Broken { status, .. } => {
                return Err(explain_download(client, id, &what, &status));
            }
        }
    };
    if !crc32c.is_empty() {
        let actual = crc32c_of_file(partial).await?;
        if actual != crc32c {
            bail!(
                "{what}: the {written} bytes received have crc32c {actual}, but the stitch recorded \
                 {crc32c}; the partial file was removed: run the download again"
            );
        }
    }
    Ok(written)
}

async fn crc32c_of_file(path: &Path) -> Result<String> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("reading {}", path.display()))?;
    let mut buffer = vec![0; 1 << 20];
    let mut crc = 0;
    loop {
        let read = file
            .read(&mut buffer)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        if read == 0 {
            return Ok(format!("{crc:08x}"));
        }
        crc = crc32c::crc32c_append(crc, &buffer[..read]);
    }
}

fn explain_download(client: &Client, id: &str, what: &str, status: &Status) -> anyhow::Error {
    if status.code() == Code::FailedPrecondition {
        anyhow!(
            "{what}: {}; `reelfarm watch {id}` waits for it, `reelfarm status {id}` shows where it is",
            status.message()
        )
    } else {
        client.explain(what, status)
    }
}

/// How one stream ended.
enum Fetched {
    Done {
        written: u64,
        crc32c: String,
    },
    /// The RPC failed after `written` bytes were safely in the file.
    Broken {
        written: u64,
        status: Status,
    },
}

/// Streams one output into `partial` from `offset` (what an earlier try already wrote):
/// the outer error is local (disk), a broken stream is `Fetched::Broken`.
async fn fetch(
    mut grpc: SequenceServiceClient<reelfarm_common::leader::Authed>,
    id: &str,
    kind: pb::OutputKind,
    partial: &Path,
    offset: u64,
) -> Result<Fetched> {
    let request = pb::ReadOutputRequest {
        sequence_id: id.to_string(),
        kind: kind as i32,
        offset,
    };
    let mut stream = match grpc.read_output(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            return Ok(Fetched::Broken {
                written: offset,
                status,
            });
        }
    };
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(offset == 0)
        .open(partial)
        .await
        .with_context(|| format!("creating {}", partial.display()))?;
    file.set_len(offset)
        .await
        .with_context(|| format!("writing {}", partial.display()))?;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .with_context(|| format!("writing {}", partial.display()))?;
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(None, target);
    bar.set_style(
        ProgressStyle::with_template(
            "{bytes:>10}/{total_bytes} [{bar:30.green/white}] {binary_bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let (mut written, mut total, mut crc32c) = (offset, None, String::new());
    loop {
        let chunk = match stream.message().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(status) => {
                bar.abandon();
                file.flush()
                    .await
                    .with_context(|| format!("writing {}", partial.display()))?;
                return Ok(Fetched::Broken { written, status });
            }
        };
        if chunk.offset != written {
            bail!(
                "the scheduler sent bytes from {} where {written} were expected; try again",
                chunk.offset
            );
        }
        if total.is_none() {
            bar.set_length(chunk.total_bytes);
            bar.set_position(written);
            total = Some(chunk.total_bytes);
            crc32c = chunk.crc32c.clone();
        }
        file.write_all(&chunk.data)
            .await
            .with_context(|| format!("writing {}", partial.display()))?;
        written += chunk.data.len() as u64;
        bar.set_position(written);
    }
    bar.finish_and_clear();
    file.flush()
        .await
        .with_context(|| format!("writing {}", partial.display()))?;
    file.sync_all()
        .await
        .with_context(|| format!("writing {}", partial.display()))?;
    let total = total.unwrap_or(written);
    if written != total {
        bail!("the scheduler sent {written} of {total} bytes of {id}; try again");
    }
    Ok(Fetched::Done { written, crc32c })
}
