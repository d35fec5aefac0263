//! One grid point run end to end: deploy, seed, poll until done, and measure (the
//! simulator's stats, the processes' metrics, CPU and peak memory).

use super::*;

/// How often the crawl's status and the processes are polled: fine enough that a point's
/// times are exact to a tenth of a second, coarse enough to cost the API nothing.
pub(super) const POLL: Duration = Duration::from_millis(100);
/// Bound on the processes becoming ready (a worker joins its group and gets partitions).
pub(super) const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long every worker must stay ready before seeding, so the group's last rebalance is
/// over and the point does not time a rebalance.
pub(super) const READY_STABLE: Duration = Duration::from_secs(3);
/// Bound on one HTTP request to a local service.
pub(super) const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn run_point(
    ctx: &PointContext<'_>,
    point: GridPoint,
    base: &str,
    topics: &Topics,
) -> Result<Row, BenchError> {
    let args = ctx.args;
    create_topics(ctx, topics).await?;
    let id_base = fresh_id_base();
    let http = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .build()
        .map_err(|e| BenchError::Http {
            what: "client".to_owned(),
            detail: e.to_string(),
        })?;
    let mut deployment = deploy(ctx, point, topics, base, id_base)?;
    wait_ready(&http, &mut deployment).await?;

    let seeds = match point.limit {
        Limit::None => args.seeds,
        Limit::PerMinute(_) => args.limited_seeds,
    }
    .min(args.works);
    let seed_keys: Vec<String> = (1..=seeds as u64)
        .map(|i| format!("/works/OL{}W", id_base + i))
        .collect();

    let stack = StackPids::read(&args.stack_run_dir);
    let our_pids: Vec<u32> = std::iter::once(deployment.sim.pid)
        .chain(deployment.workers.iter().map(|w| w.pid))
        .chain([deployment.writer.pid, deployment.api.pid])
        .collect();
    let before: Vec<ProcSample> = our_pids
        .iter()
        .map(|pid| probe::sample(*pid))
        .collect::<Result<_, _>>()?;
    let stack_before = stack.sample();
    let mut stack_peak = stack_before;
    let machine_before = probe::MachineTicks::read();

    // The API takes at most `MAX_SEEDS` seeds per crawl: a wide seed set is several crawls,
    // created back to back and all awaited.
    let started = Instant::now();
    let mut crawl_ids = Vec::new();
    for chunk in seed_keys.chunks(crate::api::MAX_SEEDS) {
        let body = json!({"seeds": chunk, "max_depth": args.depth});
        crawl_ids.push(create_crawl(&http, &deployment.api_url, &body).await?);
    }

    let statuses = until_done(&http, &mut deployment, &crawl_ids, |d| {
        stack_peak = stack_peak.max_rss(stack.sample());
        d.check_alive()
    })
    .await?;
    let seconds_to_done = started.elapsed().as_secs_f64();
    let machine_at_done = probe::MachineTicks::read();

    let writer_metrics = until_written(args, topics, &http, &mut deployment, |d| {
        stack_peak = stack_peak.max_rss(stack.sample());
        d.check_alive()
    })
    .await?;
    let seconds_to_written = started.elapsed().as_secs_f64();

    let after: Vec<ProcSample> = our_pids
        .iter()
        .map(|pid| probe::sample(*pid))
        .collect::<Result<_, _>>()?;
    let stack_after = stack.sample();
    let usage = |i: usize| Usage {
        cpu_seconds: after[i].cpu_seconds - before[i].cpu_seconds,
        peak_rss_mib: mib(after[i].peak_rss_bytes),
    };
    let worker_range = 1..1 + deployment.workers.len();
    let workers = Usage {
        cpu_seconds: worker_range.clone().map(|i| usage(i).cpu_seconds).sum(),
        peak_rss_mib: worker_range
            .clone()
            .map(|i| usage(i).peak_rss_mib)
            .fold(0.0, f64::max),
    };

    let mut worker_metrics = Metrics::default();
    for url in &deployment.worker_urls {
        worker_metrics.merge(scrape(&http, url).await?);
    }
    let sim_stats: Value = http
        .get(format!("{}/_sim/stats", deployment.sim_url))
        .send()
        .await
        .map_err(|e| http_error("simulator stats", e))?
        .json()
        .await
        .map_err(|e| http_error("simulator stats", e))?;
    let requests = sim_stats["requests"].as_u64().unwrap_or_default();
    let expected = match point.limit {
        Limit::None => None,
        Limit::PerMinute(rate) => Some(Expected::new(
            requests,
            point.proxies,
            rate,
            args.user_agent_rate_per_minute,
            (args.sim_rate_per_minute, args.sim_ua_rate_per_minute),
        )),
    };
    let behaviour = SimBehaviour::read(&sim_stats);
    let percentile = |q| {
        worker_metrics
            .quantile("relentless_worker_fetch_latency_seconds", q)
            .map(|s| s * 1000.0)
    };
    let counter = |name: &str| {
        statuses
            .iter()
            .map(|s| s["counters"][name].as_u64().unwrap_or_default())
            .sum::<u64>()
    };
    let stack_usage =
        |before: Option<ProcSample>, after: Option<ProcSample>, peak: Option<ProcSample>| {
            Some(Usage {
                cpu_seconds: after?.cpu_seconds - before?.cpu_seconds,
                peak_rss_mib: mib(peak?.rss_bytes),
            })
        };
    Ok(Row {
        point: Some(point),
        error: String::new(),
        seeds,
        requests,
        rate_limited: sim_stats["rate_limited"].as_u64().unwrap_or_default(),
        blocked: sim_stats["blocked"].as_u64().unwrap_or_default(),
        max_ip_requests_in_60s: behaviour.max_ip_requests_in_60s,
        max_user_agent_requests_in_60s: behaviour.max_user_agent_requests_in_60s,
        ips_per_user_agent: behaviour.ips_per_user_agent,
        jobs: worker_metrics.sum("relentless_worker_jobs_received_total", &[]) as u64,
        fetched: counter("fetched"),
        edges: counter("edges"),
        nodes_written: writer_metrics.sum("relentless_graph_writer_results_written_total", &[])
            as u64,
        edges_written: writer_metrics.sum("relentless_graph_writer_edges_written_total", &[])
            as u64,
        seconds_to_done,
        seconds_to_written,
        machine_cpu_busy: machine_before
            .zip(machine_at_done)
            .map(|(before, after)| before.busy_share_until(after)),
        expected,
        fetch_p50_ms: percentile(0.5),
        fetch_p90_ms: percentile(0.9),
        fetch_p99_ms: percentile(0.99),
        workers,
        writer: usage(1 + deployment.workers.len()),
        api: usage(2 + deployment.workers.len()),
        sim: usage(0),
        kafka: stack_usage(stack_before.kafka, stack_after.kafka, stack_peak.kafka),
        neo4j: stack_usage(stack_before.neo4j, stack_after.neo4j, stack_peak.neo4j),
    })
}

/// Creates a crawl through the API and returns its id.
pub(super) async fn create_crawl(
    http: &reqwest::Client,
    api_url: &str,
    body: &Value,
) -> Result<String, BenchError> {
    let created: Value = http
        .post(format!("{api_url}/crawls"))
        .json(body)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| http_error("creating a crawl", e))?
        .json()
        .await
        .map_err(|e| http_error("creating a crawl", e))?;
    created["crawl_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| BenchError::Http {
            what: "creating a crawl".to_owned(),
            detail: format!("no crawl_id in {created}"),
        })
}

/// Polls the API until every crawl of `crawl_ids` is `done`, calling `tick` on every round;
/// returns their final statuses. Any state but running or done fails the point; a 503 (the
/// crawl store did not answer in time) is asked again.
pub(super) async fn until_done(
    http: &reqwest::Client,
    deployment: &mut Deployment,
    crawl_ids: &[String],
    mut tick: impl FnMut(&mut Deployment) -> Result<(), BenchError>,
) -> Result<Vec<Value>, BenchError> {
    let mut statuses: Vec<Option<Value>> = vec![None; crawl_ids.len()];
    while statuses.iter().any(Option::is_none) {
        tick(deployment)?;
        for (id, slot) in crawl_ids.iter().zip(statuses.iter_mut()) {
            if slot.is_some() {
                continue;
            }
            let response = http
                .get(format!("{}/crawls/{id}", deployment.api_url))
                .send()
                .await
                .map_err(|e| http_error("crawl status", e))?;
            if response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                // The API's word for "the crawl store is slow or down, ask again" (a Redis
                // timeout on a loaded machine), not the crawl's state: an hour-long point
                // must not fail on one slow reply. The point's timeout still bounds it.
                tracing::warn!(crawl_id = %id, "crawl status unavailable (503); polling again");
                continue;
            }
            let status: Value = response
                .json()
                .await
                .map_err(|e| http_error("crawl status", e))?;
            match status["state"].as_str() {
                Some("done") => *slot = Some(status),
                Some("running") => {}
                other => {
                    return Err(BenchError::Http {
                        what: "crawl status".to_owned(),
                        detail: format!("unexpected state {other:?}"),
                    });
                }
            }
        }
        if statuses.iter().any(Option::is_none) {
            tokio::time::sleep(POLL).await;
        }
    }
    Ok(statuses.into_iter().flatten().collect())
}

/// Polls until the graph writer has written (or dead-lettered) every message the workers
/// published to the results and edges topics, calling `tick` on every round (liveness checks,
/// memory samples); returns the writer's metrics at that moment.
pub(super) async fn until_written(
    args: &BenchArgs,
    topics: &Topics,
    http: &reqwest::Client,
    deployment: &mut Deployment,
    mut tick: impl FnMut(&mut Deployment) -> Result<(), BenchError>,
) -> Result<Metrics, BenchError> {
    loop {
        tick(deployment)?;
        let (results, edges) = message_counts(args, topics).await?;
        let m = scrape(http, &deployment.writer_url).await?;
        let nodes_done = m.sum("relentless_graph_writer_results_written_total", &[])
            + m.sum("relentless_graph_writer_results_failed_total", &[]);
        let edges_done = m.sum("relentless_graph_writer_edges_written_total", &[])
            + m.sum("relentless_graph_writer_edges_failed_total", &[]);
        if nodes_done >= results as f64 && edges_done >= edges as f64 {
            return Ok(m);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How the point's clients looked to the simulator (`/_sim/stats`): the busiest minute of any
/// IP and of any User-Agent, and the most IPs one User-Agent used. Every worker of a point
/// sends under the same User-Agent, so "any User-Agent" is ours.
#[derive(Debug, Default, PartialEq)]
pub(super) struct SimBehaviour {
    pub(super) max_ip_requests_in_60s: u64,
    pub(super) max_user_agent_requests_in_60s: u64,
    pub(super) ips_per_user_agent: u64,
}

impl SimBehaviour {
    pub(super) fn read(stats: &Value) -> SimBehaviour {
        let most = |map: &str, field: &str| {
            stats[map]
                .as_object()
                .into_iter()
                .flat_map(|entries| entries.values())
                .filter_map(|entry| entry[field].as_u64())
                .max()
                .unwrap_or_default()
        };
        SimBehaviour {
            max_ip_requests_in_60s: most("per_ip", "max_requests_in_any_60s"),
            max_user_agent_requests_in_60s: most("per_user_agent", "max_requests_in_any_60s"),
            ips_per_user_agent: most("per_user_agent", "distinct_ips"),
        }
    }
}

pub(super) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub(super) fn http_error(what: &str, e: reqwest::Error) -> BenchError {
    BenchError::Http {
        what: what.to_owned(),
        detail: e.to_string(),
    }
}

pub(super) async fn scrape(http: &reqwest::Client, base: &str) -> Result<Metrics, BenchError> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .map_err(|e| http_error("scraping /metrics", e))?
        .text()
        .await
        .map_err(|e| http_error("scraping /metrics", e))?;
    Ok(Metrics::parse(&text))
}

/// Messages in the results and edges topics (sums of high watermarks): what the graph writer
/// must write before the point is over.
pub(super) async fn message_counts(
    args: &BenchArgs,
    topics: &Topics,
) -> Result<(i64, i64), BenchError> {
    let cluster = crate::kafka::Cluster::client_config(&args.targets.brokers);
    let names = [topics.results.clone(), topics.edges.clone()];
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = cluster
            .create()
            .map_err(|e| BenchError::Kafka(e.to_string()))?;
        // Metadata and watermarks are single round trips to a local broker.
        let timeout = Duration::from_secs(10);
        let mut counts = [0i64; 2];
        for (count, topic) in counts.iter_mut().zip(&names) {
            let metadata = consumer
                .fetch_metadata(Some(topic), timeout)
                .map_err(|e| BenchError::Kafka(e.to_string()))?;
            for t in metadata.topics() {
                for p in t.partitions() {
                    let (low, high) = consumer
                        .fetch_watermarks(topic, p.id(), timeout)
                        .map_err(|e| BenchError::Kafka(e.to_string()))?;
                    *count += high - low;
                }
            }
        }
        Ok((counts[0], counts[1]))
    })
    .await
    .map_err(|e| BenchError::Kafka(e.to_string()))?
}

/// Kafka's and Neo4j's pids, from `scripts/stack.sh`'s run directory.
pub(super) struct StackPids {
    pub(super) kafka: Option<u32>,
    neo4j: Option<u32>,
}

/// One reading of Kafka and Neo4j.
#[derive(Debug, Clone, Copy)]
pub(super) struct StackSample {
    pub(super) kafka: Option<ProcSample>,
    neo4j: Option<ProcSample>,
}

impl StackSample {
    /// Keeps the later CPU reading and the higher resident memory.
    pub(super) fn max_rss(self, other: StackSample) -> StackSample {
        let pick = |a: Option<ProcSample>, b: Option<ProcSample>| match (a, b) {
            (Some(a), Some(b)) if b.rss_bytes > a.rss_bytes => Some(b),
            (Some(a), _) => Some(a),
            (None, b) => b,
        };
        StackSample {
            kafka: pick(self.kafka, other.kafka),
            neo4j: pick(self.neo4j, other.neo4j),
        }
    }
}

/// The pid `scripts/stack.sh` recorded for `service` in its run directory.
pub(super) fn read_pid(dir: &Path, service: &str) -> Option<u32> {
    std::fs::read_to_string(dir.join(format!("{service}.pid")))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

impl StackPids {
    pub(super) fn read(dir: &Path) -> StackPids {
        let pids = StackPids {
            kafka: read_pid(dir, "kafka"),
            neo4j: read_pid(dir, "neo4j"),
        };
        if pids.kafka.is_none() || pids.neo4j.is_none() {
            tracing::warn!(dir = %dir.display(), "no Kafka or Neo4j pid: their columns stay empty");
        }
        pids
    }

    pub(super) fn sample(&self) -> StackSample {
        StackSample {
            kafka: self.kafka.and_then(|p| probe::sample(p).ok()),
            neo4j: self.neo4j.and_then(|p| probe::sample(p).ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The busiest IP, the busiest agent and the most IPs of any agent, from the
    /// simulator's stats as it serves them.
    #[test]
    fn the_simulators_view_is_read_from_its_stats() {
        let mut stats = crate::sim::stats::Stats::default();
        for (i, ip) in ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.3"]
            .iter()
            .enumerate()
        {
            stats.arrived_at(1_000 + i as u64, ip, "work", "Bot/1");
        }
        stats.arrived_at(2_000, "10.0.0.1", "robots", "Other/2");
        let json = serde_json::to_value(&stats).expect("serialises");
        assert_eq!(
            SimBehaviour::read(&json),
            SimBehaviour {
                max_ip_requests_in_60s: 3,
                max_user_agent_requests_in_60s: 4,
                ips_per_user_agent: 3,
            }
        );
        assert_eq!(SimBehaviour::read(&json!({})), SimBehaviour::default());
    }
}
