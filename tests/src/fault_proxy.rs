//! A loopback HTTP proxy in front of the S3 server that injects faults at configured rates:
//! it answers 503, resets the connection, or stalls before passing a request on. Each
//! connection carries one request (the proxy closes it after the response), so every request
//! meets its own dice roll. Rates can change while it runs; counters say what it did.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Per-mille rates of each fault; the rest pass through.
#[derive(Default)]
pub struct FaultRates {
    pub error_503: AtomicU32,
    pub reset: AtomicU32,
    pub slow: AtomicU32,
}

/// What the proxy did so far.
#[derive(Default, Debug)]
pub struct FaultCounts {
    pub requests: AtomicU64,
    pub errors_503: AtomicU64,
    pub resets: AtomicU64,
    pub slowed: AtomicU64,
}

impl FaultCounts {
    pub fn summary(&self) -> String {
        format!(
            "{} S3 requests: {} answered 503, {} reset, {} slowed",
            self.requests.load(Ordering::Relaxed),
            self.errors_503.load(Ordering::Relaxed),
            self.resets.load(Ordering::Relaxed),
            self.slowed.load(Ordering::Relaxed)
        )
    }
}

pub struct FaultProxy {
    pub endpoint: String,
    pub rates: Arc<FaultRates>,
    pub counts: Arc<FaultCounts>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str, seed: u64) -> Result<Self> {
        let upstream: SocketAddr = upstream.trim_start_matches("http://").parse()?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let rates = Arc::new(FaultRates::default());
        let counts = Arc::new(FaultCounts::default());
        let (task_rates, task_counts) = (rates.clone(), counts.clone());
        let task = tokio::spawn(async move {
            let mut dice = Dice(seed | 1);
            while let Ok((client, _)) = listener.accept().await {
                let roll = dice.next_per_mille();
                let (rates, counts) = (task_rates.clone(), task_counts.clone());
                tokio::spawn(async move {
                    let _ = serve(client, upstream, roll, &rates, &counts).await;
                });
            }
        });
        Ok(FaultProxy {
            endpoint,
            rates,
            counts,
            task,
        })
    }

    /// Sets the rates in per mille (100 = 10 %).
    pub fn set(&self, error_503: u32, reset: u32, slow: u32) {
        self.rates.error_503.store(error_503, Ordering::Relaxed);
        self.rates.reset.store(reset, Ordering::Relaxed);
        self.rates.slow.store(slow, Ordering::Relaxed);
    }
}

/// xorshift64: reproducible from the seed the test prints.
struct Dice(u64);

impl Dice {
    fn next_per_mille(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % 1000) as u32
    }
}

/// Reads up to the end of an HTTP head (`\r\n\r\n`); the head and any bytes after it.
async fn read_head(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            let rest = buffer.split_off(end + 4);
            return Ok(Some((buffer, rest)));
        }
        if buffer.len() > 64 << 10 {
            anyhow::bail!("HTTP head over 64 KiB");
        }
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// The head with any `Connection` header replaced by `Connection: close`.
fn closing(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut lines: Vec<&str> = text
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|line| !line.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    lines.push("Connection: close");
    format!("{}\r\n\r\n", lines.join("\r\n")).into_bytes()
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    roll: u32,
    rates: &FaultRates,
    counts: &FaultCounts,
) -> Result<()> {
    let Some((head, early_body)) = read_head(&mut client).await? else {
        return Ok(());
    };
    counts.requests.fetch_add(1, Ordering::Relaxed);
    let error_503 = rates.error_503.load(Ordering::Relaxed);
    let reset = rates.reset.load(Ordering::Relaxed);
    let slow = rates.slow.load(Ordering::Relaxed);
    if roll < error_503 {
        counts.errors_503.fetch_add(1, Ordering::Relaxed);
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>ServiceUnavailable</Code><Message>injected fault</Message></Error>";
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        client.write_all(response.as_bytes()).await?;
        client.shutdown().await?;
        return Ok(());
    }
    if roll < error_503 + reset {
        counts.resets.fetch_add(1, Ordering::Relaxed);
        // Linger 0: the close is a TCP reset, as a crashed load balancer would send (and with
        // a zero linger, dropping never blocks, which is what the deprecation warns about).
        #[allow(deprecated)]
        client.set_linger(Some(Duration::ZERO))?;
        drop(client);
        return Ok(());
    }
    if roll < error_503 + reset + slow {
        counts.slowed.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(&closing(&head)).await?;
    server.write_all(&early_body).await?;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // The rest of the request body goes up as it comes.
    let upload = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    // Interim `100 Continue` heads pass as they are; the final head is told to close.
    let mut pending = Vec::new();
    loop {
        let mut reader = tokio::io::AsyncReadExt::chain(&pending[..], &mut server_read);
        let Some((response_head, rest)) = read_head(&mut reader).await? else {
            break;
        };
        if response_head.starts_with(b"HTTP/1.1 100") {
            client_write.write_all(&response_head).await?;
            pending = rest;
            continue;
        }
        client_write.write_all(&closing(&response_head)).await?;
        client_write.write_all(&rest).await?;
        tokio::io::copy(&mut server_read, &mut client_write).await?;
        break;
    }
    client_write.shutdown().await?;
    upload.abort();
    Ok(())
}

/// A plain TCP forwarder whose every connection breaks after `cut_after` bytes have gone
/// back to the client: downloads cut off again and again, each time further along.
pub struct CutProxy {
    pub endpoint: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CutProxy {
    pub async fn start(upstream: &str, cut_after: u64) -> Result<Self> {
        let upstream: SocketAddr = upstream.trim_start_matches("http://").parse()?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = forward(client, upstream, cut_after).await;
                });
            }
        });
        Ok(CutProxy { endpoint, task })
    }
}

async fn forward(client: TcpStream, upstream: SocketAddr, limit: u64) -> Result<()> {
    let server = TcpStream::connect(upstream).await?;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upload = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let mut sent = 0u64;
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let read = server_read.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        let allowed = (limit - sent).min(read as u64) as usize;
        client_write.write_all(&buffer[..allowed]).await?;
        sent += allowed as u64;
        if sent >= limit {
            break;
        }
    }
    // Both halves close: the client sees its connection end mid-stream.
    upload.abort();
    drop(client_write);
    Ok(())
}
