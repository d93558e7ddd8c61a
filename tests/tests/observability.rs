//! The dashboard against real numbers: Debian's `prometheus` scrapes a live farm (a scheduler
//! and two workers rendering two sequences), then every PromQL expression in the shipped
//! Grafana dashboard is evaluated through Prometheus's HTTP API and must return data.
//! The alert rules pass `promtool check rules` and `promtool test rules`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reelfarm_tests::cluster::{Process, Timings, free_port, http_get, wait_until, which};
use reelfarm_tests::farm::Farm;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn dashboard() -> serde_json::Value {
    let path = repo_root().join("helm/reelfarm/dashboards/reelfarm.json");
    let text = std::fs::read_to_string(&path).expect("dashboard file");
    serde_json::from_str(&text).expect("dashboard is JSON")
}

/// Every `expr` of every panel target, with the dashboard variables a person would pick.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$worker", ".*");
            assert!(!expr.contains('$'), "unsubstituted variable in {expr}");
            queries.push((title.clone(), expr));
        }
    }
    queries
}

fn promtool() -> PathBuf {
    which("promtool").expect("promtool is not installed: `apt-get install -y prometheus`")
}

#[test]
fn alert_rules_check_and_their_unit_tests_pass() {
    let root = repo_root();
    for args in [
        vec!["check", "rules", "helm/reelfarm/alerts/reelfarm.rules.yaml"],
        vec!["test", "rules", "tests/prometheus/alerts_test.yaml"],
    ] {
        let output = Command::new(promtool())
            .args(&args)
            .current_dir(&root)
            .output()
            .expect("promtool runs");
        assert!(
            output.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_dashboard_has_a_datasource_variable_and_the_panels_operators_need() {
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus")
    );
    let text = dashboard.to_string();
    for metric in [
        "reelfarm_throughput_video_seconds_total",
        "reelfarm_scheduler_tasks",
        "reelfarm_worker_device_memory_reserved_bytes",
        "reelfarm_worker_device_memory_used_bytes",
        "reelfarm_worker_device_utilization_ratio",
        "reelfarm_worker_denoise_step_seconds_bucket",
        "reelfarm_scheduler_sequence_seconds_bucket",
        "reelfarm_scheduler_tasks_failed_total",
        "reelfarm_stitch_seam_delta_e00_bucket",
        "reelfarm_worker_peak_over_estimate_ratio_bucket",
        "reelfarm_cost_usd_total",
    ] {
        assert!(text.contains(metric), "no panel queries {metric}");
    }
    for panel in dashboard["panels"].as_array().unwrap() {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
    }
}

/// Debian's Prometheus scraping the farm's /metrics endpoints every second.
fn start_prometheus(dir: &Path, farm: &Farm) -> Result<(Process, String)> {
    let binary = which("prometheus").context(
        "prometheus is not installed: `apt-get install -y prometheus` (.ci/run does this)",
    )?;
    let mut config = String::from(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
    );
    for role in ["scheduler", "worker"] {
        let targets: Vec<String> = farm
            .cluster
            .metrics
            .iter()
            .filter(|(verb, _)| *verb == role)
            .map(|(_, address)| format!("'{address}'"))
            .collect();
        config.push_str(&format!(
            "  - job_name: reelfarm-{role}\n    static_configs:\n      - targets: [{}]\n        labels: {{reelfarm_component: {role}}}\n",
            targets.join(", ")
        ));
    }
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config)?;
    let address = format!("127.0.0.1:{}", free_port());
    let mut command = Command::new(binary);
    command
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("prometheus-data").display()
        ))
        .arg(format!("--web.listen-address={address}"))
        .arg("--log.level=warn");
    let mut process = Process::spawn("prometheus", command, dir)?;
    wait_until("prometheus", Duration::from_secs(30), || {
        process.exited().is_none()
            && http_get(&address, "/-/ready").is_some_and(|body| body.contains("200 OK"))
    })
    .with_context(|| format!("prometheus log:\n{}", process.log_text()))?;
    Ok((process, address))
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// One instant query through the HTTP API; the `data.result` array.
fn query(address: &str, expr: &str) -> Result<Vec<serde_json::Value>> {
    let path = format!("/api/v1/query?query={}", url_encode(expr));
    let response = http_get(address, &path).context("Prometheus does not answer")?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or(response.as_str(), |(_, body)| body);
    let body: serde_json::Value = serde_json::from_str(body)
        .with_context(|| format!("Prometheus answered {expr} with {response}"))?;
    if body["status"] != "success" {
        bail!("{expr}: {body}");
    }
    Ok(body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// The numbers of a query's result that are real values (not NaN or ±Inf).
fn finite_values(result: &[serde_json::Value]) -> Vec<f64> {
    result
        .iter()
        .filter_map(|sample| sample["value"][1].as_str()?.parse::<f64>().ok())
        .filter(|value| value.is_finite())
        .collect()
}

fn spec(dir: &Path, name: &str, seed: u32) -> Result<PathBuf> {
    // Four hard cuts: enough segments for both workers in every round.
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "title: {name}\nfps: 8\nseed: {seed}\nsteps: 3\nshots:\n  - prompt: a harbour at dawn\n    duration: 3\n  - prompt: a lighthouse at dusk\n    duration: 3\n  - prompt: open sea at noon\n    duration: 3\n  - prompt: pine forest in fog\n    duration: 3\n"
        ),
    )?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_live_farm() {
    let farm = Farm::start(Timings::default()).expect("etcd and S3 start");
    farm.check(async |farm| {
        farm.cluster.start_scheduler()?;
        farm.cluster.start_worker("gpu-a", "1x24GiB:L4")?;
        farm.cluster.start_worker("gpu-b", "1x80GiB:H100")?;
        let dir = farm.dir.path().to_path_buf();
        let (mut prometheus, address) = start_prometheus(&dir, farm)?;
        // Every process scraped once before work starts: counters are first seen at zero.
        let targets = farm.cluster.metrics.len() as f64;
        wait_until(
            "prometheus scraped every target",
            Duration::from_secs(30),
            || {
                query(&address, "sum(up)")
                    .is_ok_and(|result| finite_values(&result).first() == Some(&targets))
            },
        )?;

        // Sequences one after the other until each per-segment histogram has grown between
        // two scrapes of one worker (a series first seen already complete has no rate).
        let grew = |metric: &str| -> Result<bool> {
            let expr = format!("sum(increase({metric}[5m])) > 0");
            Ok(!finite_values(&query(&address, &expr)?).is_empty())
        };
        for round in 1..=6 {
            let path = spec(&dir, &format!("round-{round}"), round)?;
            let (code, stdout, stderr) =
                farm.cluster
                    .client(&["submit", "--watch", "--quiet", path.to_str().unwrap()])?;
            if code != 0 {
                bail!("submit round {round} exited {code}: {stdout}{stderr}");
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            if round >= 2
                && grew("reelfarm_worker_segment_render_seconds_count")?
                && grew("reelfarm_worker_peak_over_estimate_ratio_count")?
                && grew("reelfarm_worker_denoise_step_seconds_count")?
            {
                eprintln!("{round} sequences rendered");
                break;
            }
        }
        // Workers report devices every 5 s; wait for a scrape after the last report.
        tokio::time::sleep(Duration::from_secs(6)).await;

        let mut failures = Vec::new();
        let queries = dashboard_queries(&dashboard());
        for (panel, expr) in &queries {
            match query(&address, expr) {
                Err(error) => failures.push(format!("{panel}: {error:#}")),
                Ok(result) if finite_values(&result).is_empty() => {
                    failures.push(format!("{panel}: no data for {expr} ({result:?})"))
                }
                Ok(_) => {}
            }
        }
        if !failures.is_empty() {
            bail!(
                "{} of {} dashboard queries failed:\n{}\nprometheus log:\n{}",
                failures.len(),
                queries.len(),
                failures.join("\n"),
                prometheus.log_text()
            );
        }
        eprintln!("{} dashboard queries returned data", queries.len());

        // `reelfarm status` prints the dashboard's headline figure.
        let headline = &queries[0].1;
        let dashboard_value = finite_values(&query(&address, headline)?)[0];
        let (code, stdout, stderr) = farm.cluster.client(&["status"])?;
        if code != 0 {
            bail!("status exited {code}: {stderr}");
        }
        let line = stdout
            .lines()
            .find(|line| line.starts_with("throughput:"))
            .with_context(|| format!("no throughput line in {stdout}"))?;
        let printed: f64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|word| word.parse().ok())
            .with_context(|| format!("no figure in {line}"))?;
        eprintln!("dashboard {dashboard_value:.1} vs status: {line}");
        if (printed - dashboard_value).abs() > 0.01 * dashboard_value + 1.0 {
            let raw = query(
                &address,
                "{__name__=~\"reelfarm_throughput_.*\", model=\"reelfarm-tiny\"}[1h]",
            )?;
            bail!(
                "status prints {printed}, the dashboard shows {dashboard_value:.1}; samples: {}",
                serde_json::to_string(&raw)?
            );
        }
        prometheus.terminate(Duration::from_secs(10))?;
        Ok(())
    })
    .await;
}
