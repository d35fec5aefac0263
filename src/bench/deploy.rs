//! One grid point's deployment: its topics, the simulator, the graph writer, the API and
//! the workers as child processes, and the wait until every one of them is ready.

use super::*;

pub(super) struct PointContext<'a> {
    pub(super) args: &'a BenchArgs,
    pub(super) bin_dir: &'a Path,
    pub(super) log_dir: &'a Path,
    pub(super) pool: &'a [String],
    pub(super) index: usize,
    /// Settings every service of the point gets on top of the grid's (the scale points'
    /// `CRAWL_RETENTION`); empty for a grid point.
    pub(super) env: &'a [(String, String)],
}

/// A child process, killed when dropped so a failing point leaves nothing running.
pub(super) struct Proc {
    pub(super) name: String,
    pub(super) child: Child,
    pub(super) pid: u32,
    pub(super) log: PathBuf,
}

impl Proc {
    pub(super) fn start(
        ctx: &PointContext<'_>,
        name: &str,
        binary: &str,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<Proc, BenchError> {
        let program = ctx.bin_dir.join(binary);
        let log = ctx.log_dir.join(format!("{:02}-{name}.log", ctx.index));
        let spawn_error = |detail: String| BenchError::Spawn {
            what: format!("{name} ({})", program.display()),
            detail,
        };
        let file = std::fs::File::create(&log).map_err(|e| spawn_error(e.to_string()))?;
        let err_file = file.try_clone().map_err(|e| spawn_error(e.to_string()))?;
        let child = Command::new(&program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| spawn_error(e.to_string()))?;
        let pid = child
            .id()
            .ok_or_else(|| spawn_error("exited at once".to_owned()))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            pid,
            log,
        })
    }

    /// Fails when the process has exited.
    pub(super) fn check_alive(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(BenchError::Exited {
                what: self.name.clone(),
                status: status.to_string(),
                log: self.log.display().to_string(),
            }),
            Err(e) => Err(BenchError::Exited {
                what: self.name.clone(),
                status: e.to_string(),
                log: self.log.display().to_string(),
            }),
        }
    }
}

/// The processes of one point.
pub(super) struct Deployment {
    pub(super) sim: Proc,
    pub(super) workers: Vec<Proc>,
    pub(super) writer: Proc,
    pub(super) api: Proc,
    pub(super) sim_url: String,
    pub(super) api_url: String,
    pub(super) worker_urls: Vec<String>,
    pub(super) writer_url: String,
}

impl Deployment {
    pub(super) fn check_alive(&mut self) -> Result<(), BenchError> {
        self.sim.check_alive()?;
        self.writer.check_alive()?;
        self.api.check_alive()?;
        for w in &mut self.workers {
            w.check_alive()?;
        }
        Ok(())
    }
}

/// Topic names of one point.
pub(super) struct Topics {
    pub(super) frontier: String,
    pub(super) results: String,
    pub(super) edges: String,
    pub(super) dlq: String,
    pub(super) graph_dlq: String,
}

impl Topics {
    pub(super) fn named(base: &str) -> Self {
        Topics {
            frontier: format!("{base}.frontier"),
            results: format!("{base}.results"),
            edges: format!("{base}.edges"),
            dlq: format!("{base}.dlq"),
            graph_dlq: format!("{base}.graph-dlq"),
        }
    }

    pub(super) fn names(&self) -> [&str; 5] {
        [
            &self.frontier,
            &self.results,
            &self.edges,
            &self.dlq,
            &self.graph_dlq,
        ]
    }

    pub(super) fn env(&self) -> Vec<(String, String)> {
        [
            ("KAFKA_FRONTIER_TOPIC", &self.frontier),
            ("KAFKA_RESULTS_TOPIC", &self.results),
            ("KAFKA_EDGES_TOPIC", &self.edges),
            ("KAFKA_DLQ_TOPIC", &self.dlq),
            ("KAFKA_GRAPH_DLQ_TOPIC", &self.graph_dlq),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .collect()
    }
}

pub(super) async fn create_topics(
    ctx: &PointContext<'_>,
    topics: &Topics,
) -> Result<(), BenchError> {
    let program = ctx.bin_dir.join("bookworm");
    let output = Command::new(&program)
        .args([
            "topics",
            "create",
            "--partitions",
            &ctx.args.partitions.to_string(),
        ])
        .envs(topics.env())
        .output()
        .await
        .map_err(|e| BenchError::Spawn {
            what: format!("{} topics create", program.display()),
            detail: e.to_string(),
        })?;
    if !output.status.success() {
        return Err(BenchError::Kafka(format!(
            "topics create: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(())
}

pub(super) fn deploy(
    ctx: &PointContext<'_>,
    point: GridPoint,
    topics: &Topics,
    base: &str,
    id_base: u64,
) -> Result<Deployment, BenchError> {
    let args = ctx.args;
    let sim_port = free_port()?;
    let api_port = free_port()?;
    let mut sim_args: Vec<String> = [
        "sim",
        "--addr",
        &format!("127.0.0.1:{sim_port}"),
        "--id-base",
        &id_base.to_string(),
        "--works",
        &args.works.to_string(),
        "--authors",
        &args.authors.to_string(),
        "--subjects",
        &args.subjects.to_string(),
        "--latency",
        &format!("{}ms", point.latency.as_millis()),
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let (egress_rate, egress_burst, user_agent_rate) = match point.limit {
        Limit::None => {
            sim_args.push("--no-limit".to_owned());
            // Far above any rate these processes reach, so the limiters never wait; they
            // still run (in Redis), as they do in production.
            (10_000_000, 10_000, 10_000_000)
        }
        Limit::PerMinute(rate) => {
            sim_args.extend([
                "--rate-per-minute".to_owned(),
                args.sim_rate_per_minute.to_string(),
                "--burst".to_owned(),
                args.sim_burst.to_string(),
                "--ua-rate-per-minute".to_owned(),
                args.sim_ua_rate_per_minute.to_string(),
            ]);
            // The worker's default burst (10): what Open Library passes undelayed.
            (rate, 10, args.user_agent_rate_per_minute)
        }
    };
    let sim = Proc::start(ctx, "sim", "bookworm", &sim_args, &[])?;
    let sim_url = format!("http://127.0.0.1:{sim_port}");

    let mut env = topics.env();
    env.extend(ctx.env.iter().cloned());
    env.extend(
        [
            ("OPENLIBRARY_BASE_URL", sim_url.clone()),
            ("PROXY_POOL", ctx.pool[..point.proxies as usize].join(",")),
            ("EGRESS_RATE_PER_MINUTE", egress_rate.to_string()),
            ("EGRESS_BURST", egress_burst.to_string()),
            ("EGRESS_LIMIT_SCOPE", "cluster".to_owned()),
            ("EGRESS_REDIS_PREFIX", format!("{base}-egress")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let mut workers = Vec::new();
    let mut worker_urls = Vec::new();
    for i in 0..point.workers {
        let port = free_port()?;
        let mut worker_env = env.clone();
        worker_env.extend(
            [
                ("KAFKA_GROUP_ID", format!("{base}-workers")),
                ("METRICS_ADDR", format!("127.0.0.1:{port}")),
                ("WORKER_NAME", format!("bench-worker-{i}")),
                ("CONCURRENT_JOBS", point.concurrency.to_string()),
                // One budget for every request under our User-Agent, all workers together
                // (the limiter keys share the point's prefix).
                ("USER_AGENT_RATE_PER_MINUTE", user_agent_rate.to_string()),
                // No record cache: every point fetches what it crawls, so points stay
                // comparable however many ran before on the same stack.
                ("REFETCH_AFTER", "0".to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
        );
        workers.push(Proc::start(
            ctx,
            &format!("worker-{i}"),
            "worker",
            &[],
            &worker_env,
        )?);
        worker_urls.push(format!("http://127.0.0.1:{port}"));
    }
    let writer_port = free_port()?;
    let mut writer_env = env.clone();
    writer_env.extend(
        [
            ("KAFKA_GROUP_ID", format!("{base}-graph")),
            ("METRICS_ADDR", format!("127.0.0.1:{writer_port}")),
            ("GRAPH_BATCH_SIZE", args.graph_batch_size.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let writer = Proc::start(ctx, "graph-writer", "graph-writer", &[], &writer_env)?;
    let mut api_env = env;
    api_env.push(("API_ADDR".to_owned(), format!("127.0.0.1:{api_port}")));
    let api = Proc::start(ctx, "api", "bookworm", &["serve".to_owned()], &api_env)?;
    Ok(Deployment {
        sim,
        workers,
        writer,
        api,
        sim_url,
        api_url: format!("http://127.0.0.1:{api_port}"),
        worker_urls,
        writer_url: format!("http://127.0.0.1:{writer_port}"),
    })
}

pub(super) async fn answers(http: &reqwest::Client, url: &str) -> bool {
    match http.get(url).send().await {
        Ok(response) => response.status().is_success(),
        Err(_) => false,
    }
}

pub(super) async fn wait_ready(
    http: &reqwest::Client,
    d: &mut Deployment,
) -> Result<(), BenchError> {
    let mut urls = vec![
        format!("{}/_sim/stats", d.sim_url),
        format!("{}/readyz", d.api_url),
        format!("{}/readyz", d.writer_url),
    ];
    urls.extend(d.worker_urls.iter().map(|u| format!("{u}/readyz")));
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut ready_since: Option<Instant> = None;
    loop {
        d.check_alive()?;
        let mut all = true;
        for url in &urls {
            all &= answers(http, url).await;
        }
        ready_since = if all {
            ready_since.or(Some(Instant::now()))
        } else {
            None
        };
        if ready_since.is_some_and(|since| since.elapsed() >= READY_STABLE) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Timeout {
                what: "every process to be ready".to_owned(),
                after: READY_TIMEOUT,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}
