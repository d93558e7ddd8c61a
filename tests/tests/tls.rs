//! TLS everywhere on real parts: etcd serving TLS with `--client-cert-auth`, schedulers
//! serving TLS, S3 over https with a private CA, a worker known only by its client
//! certificate, and what is refused: plaintext,
//! an untrusted scheduler, a certificate from another CA, a certified worker acting as
//! another id or calling the client API.

use std::time::Duration;

use anyhow::bail;
use reelfarm_common::leader::{
    Bearer, connect_leader, parse_endpoints, sequence_client, worker_client,
};
use reelfarm_common::pb;
use reelfarm_common::tls::ClientTls;
use reelfarm_tests::cluster::Timings;
use reelfarm_tests::farm::Farm;
use reelfarm_tests::leading::{code_of, leader_client, poll_until_succeeded, submit};
use reelfarm_tests::pki::TestCa;
use reelfarm_tests::three_shot_spec;

fn registration(worker_id: &str) -> pb::RegisterWorkerRequest {
    pb::RegisterWorkerRequest {
        name: "by-hand".into(),
        devices: vec![reelfarm_tests::simulated_gpu("by-hand gpu")],
        models: vec!["reelfarm-tiny".into()],
        worker_id: worker_id.into(),
        running: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_farm_runs_over_tls_and_knows_workers_by_their_certificates() {
    let farm = Farm::start_tls(Timings::default()).expect("etcd (TLS) and S3 start");
    farm.check(async |farm| {
        // etcd takes no client without a certificate from its CA.
        let (etcd_ca, _) = farm.cluster.etcd_tls.clone().expect("etcd TLS");
        let trust_only = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(3))
            .with_tls(etcd_client::TlsOptions::new().ca_certificate(
                etcd_client::Certificate::from_pem(std::fs::read_to_string(&etcd_ca)?),
            ));
        let anonymous = async {
            let mut client =
                etcd_client::Client::connect([farm.etcd.url.as_str()], Some(trust_only)).await?;
            client.get("/", None).await
        }
        .await;
        if anonymous.is_ok() {
            bail!("etcd answered a client without a certificate");
        }
        farm.etcd_client()
            .await?
            .put("probe", "with a certificate", None)
            .await?;

        // S3 over https: refused without the private CA, reached with it.
        let https = farm.cluster.store.endpoint.clone();
        if !https.starts_with("https://") {
            bail!("the test farm's S3 should be https, got {https}");
        }
        let settings = reelfarm_common::s3::S3Settings {
            endpoint: Some(https),
            timeout: Duration::from_secs(3),
            ..farm.s3.settings()
        };
        match reelfarm_common::s3::S3BlobStore::connect(settings.clone()).await {
            Ok(_) => bail!("S3 behind a private CA's certificate answered a client without it"),
            Err(error) => eprintln!("S3 over https without the CA: {error}"),
        }
        let ca_pem = std::fs::read_to_string(farm.cluster.store.ca_file.as_ref().expect("S3 CA"))?;
        reelfarm_common::s3::S3BlobStore::connect(reelfarm_common::s3::S3Settings {
            ca_pem: Some(ca_pem),
            ..settings
        })
        .await?;

        let cluster = &mut farm.cluster;
        cluster.enable_auth()?;
        let url = cluster.start_scheduler()?;
        if !url.starts_with("https://") {
            bail!("the scheduler should serve https, got {url}");
        }
        cluster.start_worker("gpu-a", "1x4GiB")?;

        // A sequence renders end to end: client → scheduler → worker all over TLS, the
        // scheduler's state in etcd over mutual TLS; the worker id is its certificate's name.
        let id = submit(&mut leader_client(cluster).await?, three_shot_spec(2), "")
            .await?
            .sequence_id;
        let status = poll_until_succeeded(cluster, &id, Duration::from_secs(120)).await?;
        let workers: Vec<&str> = status.segments.iter().map(|s| s.worker.as_str()).collect();
        if workers.iter().any(|worker| *worker != "gpu-a") {
            bail!("segments ran on {workers:?}, not on the certified worker id gpu-a");
        }
        let (code, stdout, stderr) = cluster.client(&["status", &id])?;
        if code != 0 || !stdout.contains("succeeded") {
            bail!("`reelfarm status` over TLS: {code} {stdout} {stderr}");
        }

        // Plaintext to a TLS port fails; TLS files next to an http:// URL are refused.
        let plain = url.replace("https://", "http://");
        let (code, _, stderr) = cluster.client(&["status", "--scheduler", &plain])?;
        eprintln!("http:// with a CA file: {}", stderr.trim());
        if code == 0 || !stderr.contains("write https://") {
            bail!("an http:// URL with --tls-ca-file must be refused: {code} {stderr}");
        }
        let bare = parse_endpoints(&plain)?;
        if connect_leader(&bare, &ClientTls::default(), Duration::from_secs(2))
            .await
            .is_ok()
        {
            bail!("a plaintext client reached the TLS scheduler");
        }
        // A client that does not trust the farm's CA does not talk to it.
        let untrusting = std::process::Command::new(reelfarm_tests::cluster::reelfarm_binary())
            .args(["status", "--scheduler", &url, "--connect-timeout", "2"])
            .env("REELFARM_TOKEN", cluster.admin_token().unwrap_or(""))
            .env_remove("REELFARM_TLS_CA_FILE")
            .output()?;
        let stderr = String::from_utf8_lossy(&untrusting.stderr);
        eprintln!("a client without the CA: {}", stderr.trim());
        if untrusting.status.success() || !stderr.to_lowercase().contains("certificate") {
            bail!("a client without the farm's CA must fail on the certificate: {stderr}");
        }

        // A worker certified as gpu-b is gpu-b and nothing else.
        let ca = cluster.tls.as_ref().expect("farm CA");
        let endpoints = parse_endpoints(&cluster.scheduler_list())?;
        let gpu_b = ca.client("hand-gpu-b", "gpu-b")?;
        let certified =
            ClientTls::trusting(&ca.cert_pem).with_identity(&gpu_b.cert_pem, &gpu_b.key_pem);
        let channel = connect_leader(&endpoints, &certified, Duration::from_secs(10))
            .await?
            .0;
        let mut as_b = worker_client(channel.clone(), Bearer::default());
        let taken = as_b.register(registration("gpu-a")).await;
        if code_of(&taken) != Some(tonic::Code::PermissionDenied) {
            bail!("gpu-b registering as gpu-a must be PermissionDenied: {taken:?}");
        }
        let own = as_b.register(registration("")).await?.into_inner();
        if own.worker_id != "gpu-b" {
            bail!(
                "a certified worker's id is its certificate's name, got {:?}",
                own.worker_id
            );
        }
        let stream = as_b
            .receive_commands(pb::ReceiveCommandsRequest {
                worker_id: "gpu-a".into(),
            })
            .await;
        if code_of(&stream) != Some(tonic::Code::PermissionDenied) {
            bail!("gpu-b opening gpu-a's command stream must be PermissionDenied: {stream:?}");
        }
        let heartbeat = as_b
            .heartbeat(pb::HeartbeatRequest {
                worker_id: "gpu-a".into(),
                devices: Vec::new(),
            })
            .await;
        if code_of(&heartbeat) != Some(tonic::Code::PermissionDenied) {
            bail!("gpu-b heartbeating for gpu-a must be PermissionDenied: {heartbeat:?}");
        }
        // A certificate makes a worker, not a client.
        let submitted = sequence_client(channel, Bearer::default())
            .list_sequences(pb::ListSequencesRequest::default())
            .await;
        if code_of(&submitted) != Some(tonic::Code::PermissionDenied) {
            bail!("a worker certificate must not reach the client API: {submitted:?}");
        }

        // A certificate from another CA gets nowhere.
        let rogue_ca = TestCa::new(&cluster.dir, "rogue-ca")?;
        let rogue = rogue_ca.client("rogue-gpu-a", "gpu-a")?;
        let forged =
            ClientTls::trusting(&ca.cert_pem).with_identity(&rogue.cert_pem, &rogue.key_pem);
        let refused = async {
            let channel = connect_leader(&endpoints, &forged, Duration::from_secs(3))
                .await?
                .0;
            worker_client(channel, Bearer::default())
                .register(registration("gpu-a"))
                .await?;
            Ok::<_, anyhow::Error>(())
        }
        .await;
        match refused {
            Ok(()) => bail!("a certificate from another CA registered as gpu-a"),
            Err(error) => eprintln!("another CA's certificate: {error:#}"),
        }
        Ok(())
    })
    .await;
}
