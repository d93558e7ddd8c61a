//! Integration-test harness: embedded farms on loopback and an independent video reader.

pub mod cluster;
pub mod fake_videos;
pub mod farm;
pub mod fault_proxy;
pub mod leading;
pub mod pki;
pub mod probe;
pub mod s3_server;
pub mod tls_proxy;

use std::time::Duration;

use reelfarm_cli::embedded::EmbeddedFarm;
use reelfarm_common::pb;
use reelfarm_common::pb::sequence_service_client::SequenceServiceClient;

/// A farm in a temp dir (kept when `REELFARM_KEEP_TEST_DIRS=1`), with a connected client.
pub struct TestFarm {
    pub farm: EmbeddedFarm,
    pub client: SequenceServiceClient<reelfarm_common::leader::Authed>,
    pub dir: tempfile::TempDir,
}

impl TestFarm {
    pub async fn start(workers: usize) -> anyhow::Result<Self> {
        let mut dir = tempfile::Builder::new()
            .prefix("reelfarm-test-")
            .tempdir()?;
        if std::env::var_os("REELFARM_KEEP_TEST_DIRS").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping test dir {}", dir.path().display());
        }
        let farm = EmbeddedFarm::start_builtin(dir.path(), workers).await?;
        let channel = tonic::transport::Endpoint::from_shared(farm.url.clone())?
            .connect()
            .await?;
        let client = reelfarm_common::leader::sequence_client(channel, farm.bearer.clone());
        Ok(TestFarm { farm, client, dir })
    }

    /// Submits without an idempotency key and follows the sequence to its final status.
    pub async fn render(
        &mut self,
        spec: pb::SequenceSpec,
        timeout: Duration,
    ) -> anyhow::Result<pb::SequenceStatus> {
        self.render_with(spec, false, timeout).await
    }

    /// `render`, with or without the segment cache.
    pub async fn render_with(
        &mut self,
        spec: pb::SequenceSpec,
        no_cache: bool,
        timeout: Duration,
    ) -> anyhow::Result<pb::SequenceStatus> {
        let request = pb::SubmitSequenceRequest {
            spec: Some(spec),
            idempotency_key: String::new(),
            no_cache,
            max_cost_usd: None,
        };
        let submitted = self.client.submit_sequence(request).await?.into_inner();
        let seen = self.watch_to_end(&submitted.sequence_id, timeout).await?;
        seen.into_iter()
            .last()
            .ok_or_else(|| anyhow::anyhow!("no status for {}", submitted.sequence_id))
    }

    pub async fn status(&mut self, sequence_id: &str) -> anyhow::Result<pb::SequenceStatus> {
        let request = pb::GetSequenceRequest {
            sequence_id: sequence_id.into(),
        };
        Ok(self.client.get_sequence(request).await?.into_inner())
    }

    /// Follows the watch stream to the end; returns every snapshot seen.
    pub async fn watch_to_end(
        &mut self,
        sequence_id: &str,
        timeout: Duration,
    ) -> anyhow::Result<Vec<pb::SequenceStatus>> {
        let mut stream = self
            .client
            .watch_sequence(pb::WatchSequenceRequest {
                sequence_id: sequence_id.into(),
            })
            .await?
            .into_inner();
        let mut seen = Vec::new();
        tokio::time::timeout(timeout, async {
            while let Some(status) = stream.message().await? {
                seen.push(status);
            }
            anyhow::Ok(())
        })
        .await
        .map_err(|_| {
            anyhow::anyhow!("sequence {sequence_id} did not finish within {timeout:?}")
        })??;
        Ok(seen)
    }
}

/// One shot of a test spec; a crossfade lasts 0.5 s.
pub fn shot(prompt: &str, seconds: f64, transition: &str) -> pb::ShotSpec {
    pb::ShotSpec {
        prompt: prompt.into(),
        duration_seconds: seconds,
        transition: Some(transition.into()),
        crossfade_seconds: (transition == "crossfade").then_some(0.5),
        ..Default::default()
    }
}

/// A short spec at 8 fps with every join kind: cut, continue, crossfade.
pub fn three_shot_spec(steps: u32) -> pb::SequenceSpec {
    pb::SequenceSpec {
        title: Some("three shots".into()),
        fps: Some(8),
        seed: Some(3),
        steps: Some(steps),
        shots: vec![
            shot("mountains at noon", 2.0, "cut"),
            shot("the camera pushes in", 1.5, "continue"),
            shot("pine forest in fog", 2.0, "crossfade"),
        ],
        ..Default::default()
    }
}

/// Ten 12 s shots, 120 s in all, with every join kind.
pub fn two_minute_spec() -> pb::SequenceSpec {
    let joins = [
        "cut",
        "continue",
        "crossfade",
        "cut",
        "continue",
        "continue",
        "cut",
        "crossfade",
        "continue",
        "cut",
    ];
    pb::SequenceSpec {
        title: Some("two minutes, every join".into()),
        fps: Some(8),
        seed: Some(21),
        // Slow enough that the faults land while segments render.
        steps: Some(8),
        shots: joins
            .iter()
            .enumerate()
            .map(|(index, join)| shot(&format!("chaos shot {index}"), 12.0, join))
            .collect(),
        ..Default::default()
    }
}

/// One simulated 4 GiB GPU, for workers the tests drive by hand over gRPC.
pub fn simulated_gpu(name: &str) -> pb::Device {
    pb::Device {
        index: 0,
        kind: "simulated".into(),
        name: name.into(),
        memory_total_bytes: 4 << 30,
        memory_free_bytes: 4 << 30,
        ..Default::default()
    }
}
