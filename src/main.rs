//! The `registry` binary: CLI, configuration loading, logging, signals, and the wiring of
//! the registry API, the online collector and the admin API into one server.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use gc::lock::{RootLock, admin_socket};
use registry::config::{Config, Loaded, parse_duration};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "registry",
    version,
    about = "drydock: an OCI distribution registry"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry API. Without CONFIG: ./data on 127.0.0.1:5000, deletes enabled.
    Serve {
        /// A Distribution-style config.yml.
        config: Option<PathBuf>,
    },
    /// Remove blobs, layer links and (with -m) manifests nothing references. When a
    /// server owns the root, it is asked to run the collection instead.
    #[command(name = "garbage-collect", alias = "gc")]
    GarbageCollect {
        /// Print what would be removed; remove nothing.
        #[arg(short = 'd', long)]
        dry_run: bool,
        /// Also remove manifests that no tag reaches.
        #[arg(short = 'm', long, visible_alias = "delete-untagged")]
        remove_untagged: bool,
        /// Keep anything newer than this (e.g. 0s, 30m, 1h); default: gc.grace.
        #[arg(long)]
        grace: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Print only the summary line.
        #[arg(short, long)]
        quiet: bool,
        /// A Distribution-style config.yml; default: the embedded one (./data).
        config: Option<PathBuf>,
    },
    /// Scheduled maintenance: gc, retention, upload purge, scrub.
    Maintenance {
        #[command(subcommand)]
        action: MaintenanceAction,
    },
}

#[derive(Subcommand)]
enum MaintenanceAction {
    /// Run tasks now (through the server when one owns the root).
    Run {
        /// A task to run (gc, retention, uploads, scrub); repeatable. Default: every
        /// enabled task (or those of --schedule / --auto).
        #[arg(long = "task", value_name = "NAME")]
        tasks: Vec<String>,
        /// Only the tasks configured with this schedule (hourly, daily, weekly).
        #[arg(long)]
        schedule: Option<String>,
        /// Only tasks that are due and whose thresholds are met.
        #[arg(long)]
        auto: bool,
        /// Report what the tasks would do; change nothing, record nothing.
        #[arg(short = 'd', long)]
        dry_run: bool,
        /// Print the records as JSON.
        #[arg(long)]
        json: bool,
        /// A Distribution-style config.yml; default: the embedded one (./data).
        config: Option<PathBuf>,
    },
    /// Show each task's last run (and the server's queue when one owns the root).
    Status {
        #[arg(long)]
        json: bool,
        /// A Distribution-style config.yml; default: the embedded one (./data).
        config: Option<PathBuf>,
    },
    /// Install the schedule as systemd timers or a crontab block.
    Start {
        #[arg(long, default_value = "auto")]
        scheduler: String,
        /// Where to write systemd units (default /etc/systemd/system); with this, units
        /// are written but systemctl is not called.
        #[arg(long)]
        unit_dir: Option<PathBuf>,
        /// Edit this file instead of the user's crontab.
        #[arg(long)]
        crontab_file: Option<PathBuf>,
        /// The config.yml the installed units run with (required: the units do not run
        /// in this folder, so the embedded default's ./data would be elsewhere).
        config: PathBuf,
    },
    /// Remove what `start` installed.
    Stop {
        #[arg(long, default_value = "auto")]
        scheduler: String,
        #[arg(long)]
        unit_dir: Option<PathBuf>,
        #[arg(long)]
        crontab_file: Option<PathBuf>,
        /// Accepted for symmetry with `start`; not used.
        config: Option<PathBuf>,
    },
}

fn load_config(path: Option<&Path>, log_level: Option<&str>) -> anyhow::Result<Config> {
    let Loaded {
        config,
        unknown_keys,
    } = Config::load(path, std::env::vars())?;
    init_logging(&config, log_level);
    for key in unknown_keys {
        tracing::warn!(
            key,
            "configuration key has no effect (set from the environment, or listed under ignore)"
        );
    }
    Ok(config)
}

fn init_logging(config: &Config, level: Option<&str>) {
    let level = level.unwrap_or(config.log_filter());
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if config.log.formatter == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed here, before the server
/// announces itself, so a signal sent right after start-up is never the default action.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
}

/// The listener systemd passed by socket activation (`LISTEN_PID`/`LISTEN_FDS`), if any;
/// `http.addr` is then not bound. Taken before any thread starts (`listenfd` clears the
/// variables), checked to be a listening TCP socket, and marked close-on-exec so a
/// post-process command never inherits it.
fn activated_listener() -> anyhow::Result<Option<std::net::TcpListener>> {
    use std::os::fd::AsRawFd;
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    if fds.len() > 1 {
        bail!(
            "socket activation passed {} sockets; drydock takes one (one ListenStream=)",
            fds.len()
        );
    }
    let listener = fds
        .take_tcp_listener(0)
        .context("the socket-activated file descriptor")?
        .context("the socket-activated file descriptor was already taken")?;
    let mut listening: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `listening`, a c_int we own.
    let rc = unsafe {
        libc::getsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut listening as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 || listening == 0 {
        bail!("the socket-activated file descriptor is a TCP socket that is not listening");
    }
    listener
        .set_nonblocking(true)
        .context("socket-activated listener")?;
    Ok(Some(listener))
}

/// Tells systemd (`Type=notify`) how the service is doing; nothing without
/// `NOTIFY_SOCKET`.
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Pings systemd's watchdog at half its interval while the runtime runs, when the unit
/// sets `WatchdogSec=`.
fn start_watchdog() {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let every = std::time::Duration::from_micros(usec / 2);
    tokio::spawn(async move {
        loop {
            notify(&[sd_notify::NotifyState::Watchdog]);
            tokio::time::sleep(every).await;
        }
    });
}

/// Resolves when the server should stop: on SIGTERM or SIGINT, `/readyz` turns red and
/// systemd hears `STOPPING=1` at once; the listener stops accepting `health.shutdown_delay`
/// later, then in-flight requests drain.
async fn drain_on_signal(
    health: std::sync::Arc<registry::health::Health>,
    delay: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    shutdown.await;
    health.start_draining();
    notify(&[sd_notify::NotifyState::Stopping]);
    if !delay.is_zero() {
        tracing::info!(
            ?delay,
            "not ready; still accepting until the shutdown delay has passed"
        );
        tokio::time::sleep(delay).await;
    }
}

async fn serve(config: Config, activated: Option<std::net::TcpListener>) -> anyhow::Result<()> {
    // Certificates load before anything else starts: a file that does not stops start-up
    // with the key that names it.
    let tls = match &config.http.tls {
        Some(t) => Some(registry::tls::Tls::from_config(t).map_err(anyhow::Error::msg)?),
        None => None,
    };
    gc::maintenance::validate(&config).map_err(|e| anyhow::anyhow!("configuration key {e}"))?;
    // A filesystem root is created, locked (one server per root) and holds the admin
    // socket; a bucket is checked (reachable, credentials accepted) and has neither lock
    // nor socket yet (issue 18).
    let (root, _lock, bucket_lock) = match &config.storage.s3 {
        Some(c) => {
            let s3 = registry::storage::s3::S3Driver::new(c.clone()).map_err(anyhow::Error::msg)?;
            s3.check()
                .await
                .map_err(|e| anyhow::anyhow!("storage.s3: bucket {}: {e}", c.bucket))?;
            let lost = |why: String| {
                tracing::error!("{why}; stopping: another server owns the root now");
                std::process::exit(1);
            };
            // Replicas share the root on purpose (replica mode): the database
            // coordinates them, so the one-server lock is not taken.
            let lock = if config.database.enabled {
                None
            } else {
                let lock = gc::lock::BucketLock::acquire(
                    std::sync::Arc::new(s3),
                    gc::lock::BUCKET_LOCK_TTL,
                    lost,
                )
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "storage.s3: bucket root s3://{}/{} is owned by another drydock \
                         process ({e}); one server per root",
                        c.bucket,
                        c.rootdirectory
                    )
                })?;
                Some(lock)
            };
            (None, None, lock)
        }
        None => {
            let root = config.storage.filesystem.rootdirectory.clone();
            std::fs::create_dir_all(&root)
                .with_context(|| format!("cannot create storage root {}", root.display()))?;
            let Some(lock) = RootLock::try_acquire(&root)
                .with_context(|| format!("cannot lock storage root {}", root.display()))?
            else {
                let holder = RootLock::holder_pid(&root)
                    .map(|p| format!("pid {p}"))
                    .unwrap_or_else(|| "pid unknown".into());
                bail!(
                    "storage root {} is owned by another drydock process ({holder}); one server per root",
                    root.display(),
                );
            };
            (Some(root), Some(lock), None)
        }
    };
    let listener = match activated {
        Some(l) => tokio::net::TcpListener::from_std(l).context("socket-activated listener")?,
        None => {
            let addr = config.listen_addr();
            tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?
        }
    };
    let local = listener.local_addr()?;
    raise_open_files_limit(config.http.max_connections);

    let liveness = replica_liveness(&config).await?;
    let state =
        registry::server::state_coordinated(&config, liveness).map_err(anyhow::Error::msg)?;
    let metrics = state.metrics.clone();
    let gc::online::Online {
        router: app,
        cleaner,
        maintenance,
        health,
        auth,
    } = gc::online::app(state, &config).map_err(anyhow::Error::msg)?;
    warn_if_exposed(&config, local);
    {
        let auth = auth.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::hangup()) {
                Ok(mut s) => {
                    while s.recv().await.is_some() {
                        tracing::info!("SIGHUP: reloading credentials, keys and certificates");
                        auth.reload();
                        if let Some(t) = &tls {
                            match t.reload() {
                                Ok(()) => tracing::info!(
                                    "TLS certificates reloaded; new connections use them"
                                ),
                                Err(e) => tracing::error!(
                                    error = %e,
                                    "TLS certificates not reloaded; keeping the old ones"
                                ),
                            }
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot listen for SIGHUP"),
            }
        });
    }
    if let Some(addr) = config.debug_addr() {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (http.debug.addr)"))?;
        let mut router = registry::health::router(health.clone());
        if let (Some(m), true) = (&metrics, config.http.debug.prometheus.enabled) {
            router = router.merge(gc::online::metrics_router(
                &config.http.debug.prometheus.path,
                m.clone(),
            ));
        }
        let router = registry::api::framing::layer(router);
        let bound = listener.local_addr()?;
        tracing::info!(debug_addr = %bound, "debug listener bound");
        let options = registry::server::ServeOptions::from_config(&config, None);
        tokio::spawn(async move {
            let never = std::future::pending::<()>();
            if let Err(e) = registry::server::serve(listener, router, options, never).await {
                tracing::error!(error = %e, "debug listener stopped");
            }
        });
    }
    // Always handled (`systemctl reload` sends it): without a handler SIGUSR1 would
    // end the process.
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut usr1 = signal(SignalKind::user_defined1()).context("cannot listen for SIGUSR1")?;
        let c = cleaner.clone();
        tokio::spawn(async move {
            while usr1.recv().await.is_some() {
                if c.schedule() {
                    tracing::info!("SIGUSR1: garbage collection scheduled");
                } else {
                    tracing::info!("SIGUSR1: gc.enabled is false; no collection scheduled");
                }
            }
        });
    }
    if let Some(root) = &root {
        gc::admin::serve_socket(admin_socket(root), gc::admin::router(cleaner, maintenance))
            .await
            .context("cannot open the admin socket")?;
    }
    let shutdown = shutdown_signal()?;
    let storage = match (&root, &config.storage.s3) {
        (Some(root), _) => root.display().to_string(),
        (None, Some(c)) => format!("s3://{}/{}", c.bucket, c.rootdirectory),
        (None, None) => String::new(),
    };
    tracing::info!(addr = %local, storage = %storage, "drydock registry listening");
    // The listener is bound (or was passed) and accepts into its backlog from here on.
    notify(&[sd_notify::NotifyState::Ready]);
    start_watchdog();
    start_trimmer();
    let delay = config.health.shutdown_delay;
    registry::server::serve(
        listener,
        app,
        registry::server::ServeOptions {
            tls,
            ..registry::server::ServeOptions::from_config(&config, metrics)
        },
        drain_on_signal(health, delay, shutdown),
    )
    .await?;
    if let Some(root) = &root {
        let _ = std::fs::remove_file(admin_socket(root));
    }
    if let Some(lock) = bucket_lock {
        lock.release().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Replica mode (`database.enabled`, on a bucket: the configuration checks it): connects,
/// migrates and registers before serving; the store's writers and removers then
/// coordinate with every other replica through the database. `None` for one server.
async fn replica_liveness(
    config: &Config,
) -> anyhow::Result<Option<std::sync::Arc<dyn registry::liveness::Liveness>>> {
    let db = &config.database;
    if !db.enabled {
        return Ok(None);
    }
    let pg = registry::coordination::Postgres::connect(db, config.gc.pending_ttl)
        .await
        .map_err(|e| anyhow::anyhow!("database: {}:{}/{}: {e}", db.host, db.port, db.dbname))?;
    tracing::info!(
        replica = pg.replica(),
        "replica mode: coordinating through the database"
    );
    Ok(Some(std::sync::Arc::new(pg)))
}

/// Start-up warning when the registry is reachable from other hosts without TLS or
/// without authentication.
fn warn_if_exposed(config: &Config, local: std::net::SocketAddr) {
    if local.ip().is_loopback() {
        return;
    }
    if config.http.tls.is_none() {
        tracing::warn!(
            addr = %local,
            "SECURITY: listening on a non-loopback address WITHOUT TLS: credentials and \
             content cross the network in clear (set http.tls, or terminate TLS in a proxy)"
        );
    }
    if !config.auth.enabled() {
        tracing::warn!(
            addr = %local,
            "SECURITY: listening on a non-loopback address WITHOUT AUTHENTICATION: anyone \
             who can connect may push, pull and delete (set auth.htpasswd or auth.token)"
        );
    }
}

struct GcArgs {
    dry_run: bool,
    remove_untagged: bool,
    grace: Option<String>,
    json: bool,
    quiet: bool,
}

/// The store of a CLI command that holds the root lock itself: it serves no reads, so
/// it keeps no cache (and its removals invalidate nothing).
fn offline_store(config: &Config) -> anyhow::Result<registry::Store> {
    Ok(registry::server::state_from_config(config)
        .map_err(anyhow::Error::msg)?
        .store
        .without_cache())
}

/// The CLI's collector and maintenance work on a local root (its lock, its admin
/// socket): refused, with the reason, on `storage.s3` (issue 18). The server on the
/// bucket collects itself (`gc.enabled`, `POST /admin/gc`); the CLI has no channel to
/// it yet, and collecting beside it would have only the grace period for protection.
fn refuse_on_s3(config: &Config, what: &str) -> anyhow::Result<()> {
    if config.storage.s3.is_some() {
        bail!(
            "{what} does not run on storage.s3 yet from the command line; the configuration \
             names a bucket (the server on it collects online: gc.enabled, or POST /admin/gc)"
        );
    }
    Ok(())
}

async fn garbage_collect(config: Config, args: GcArgs) -> anyhow::Result<()> {
    refuse_on_s3(&config, "garbage-collect")?;
    let mut opts = gc::online::options(&config);
    opts.dry_run = args.dry_run;
    opts.remove_untagged = args.remove_untagged;
    if let Some(g) = &args.grace {
        opts.grace = parse_duration(g).map_err(|e| anyhow::anyhow!("--grace: {e}"))?;
    }
    let root = config.storage.filesystem.rootdirectory.clone();
    if !root.exists() {
        bail!("storage root {} does not exist", root.display());
    }
    let lock = RootLock::try_acquire(&root)
        .with_context(|| format!("cannot lock storage root {}", root.display()))?;
    let report = match lock {
        Some(_held) => gc::collect(&offline_store(&config)?, &opts, None).await?,
        None => {
            let socket = admin_socket(&root);
            tracing::info!(socket = %socket.display(), "a server owns this root; asking it to collect");
            let q = format!(
                "/admin/gc?wait=true&dry_run={}&remove_untagged={}&grace={}",
                opts.dry_run,
                opts.remove_untagged,
                registry::config::format_duration(opts.grace)
            );
            let (status, body) = gc::admin::request(&socket, "POST", &q).await.map_err(|e| {
                anyhow::anyhow!("the server owning {} did not answer: {e}", root.display())
            })?;
            if !status.is_success() {
                bail!(
                    "the server refused: {status} {}",
                    String::from_utf8_lossy(&body)
                );
            }
            serde_json::from_slice::<gc::Report>(&body).context("the server's report")?
        }
    };
    // Written as it goes: a large report is never one string in memory.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        report.write_text(&mut out, args.quiet)?;
    }
    out.flush()?;
    Ok(())
}

fn print_records(records: &[gc::maintenance::Record], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(records)?);
        return Ok(());
    }
    for r in records {
        println!(
            "{:<10} {:<8} {:>9.0} ms  {}{}",
            r.task.name(),
            r.outcome.name(),
            r.duration_ms,
            r.started_at,
            if r.message.is_empty() {
                String::new()
            } else {
                format!("  {}", r.message)
            }
        );
    }
    Ok(())
}

async fn maintenance(action: MaintenanceAction) -> anyhow::Result<()> {
    use gc::maintenance::{Maintenance, Outcome, Task, units};
    match action {
        MaintenanceAction::Run {
            tasks,
            schedule,
            auto,
            dry_run,
            json,
            config,
        } => {
            let config = load_config(config.as_deref(), Some("info"))?;
            refuse_on_s3(&config, "maintenance run")?;
            gc::maintenance::validate(&config)
                .map_err(|e| anyhow::anyhow!("configuration key {e}"))?;
            let mut chosen = Vec::new();
            for t in &tasks {
                chosen.push(Task::parse(t).ok_or_else(|| {
                    anyhow::anyhow!("unknown task {t:?}: gc, retention, uploads or scrub")
                })?);
            }
            let root = config.storage.filesystem.rootdirectory.clone();
            let trigger = match &schedule {
                Some(s) => format!("timer:{s}"),
                None => "cli".to_owned(),
            };
            let lock = RootLock::try_acquire(&root)
                .with_context(|| format!("cannot lock storage root {}", root.display()))?;
            let records: Vec<gc::maintenance::Record> = match lock {
                Some(_held) => {
                    let m = Maintenance::new(offline_store(&config)?, config.clone(), None);
                    if chosen.is_empty() {
                        chosen = if auto || schedule.is_some() {
                            m.due(schedule.as_deref(), auto).await
                        } else {
                            m.enabled_tasks()
                        };
                    }
                    m.run_with(chosen, &trigger, dry_run).await
                }
                None => {
                    let mut q = format!("/admin/maintenance/run?wait=true&trigger={trigger}");
                    for t in &chosen {
                        q.push_str(&format!("&task={}", t.name()));
                    }
                    if let Some(s) = &schedule {
                        q.push_str(&format!("&schedule={s}"));
                    }
                    if auto {
                        q.push_str("&auto=true");
                    }
                    if dry_run {
                        q.push_str("&dry_run=true");
                    }
                    let (status, body) = gc::admin::request(&admin_socket(&root), "POST", &q)
                        .await
                        .map_err(|e| {
                            anyhow::anyhow!(
                                "the server owning {} did not answer: {e}",
                                root.display()
                            )
                        })?;
                    if !status.is_success() {
                        bail!(
                            "the server refused: {status} {}",
                            String::from_utf8_lossy(&body)
                        );
                    }
                    serde_json::from_slice(&body).context("the server's records")?
                }
            };
            print_records(&records, json)?;
            if records
                .iter()
                .any(|r| matches!(r.outcome, Outcome::Failed | Outcome::Killed))
            {
                bail!("a maintenance task failed");
            }
            Ok(())
        }
        MaintenanceAction::Status { json, config } => {
            let config = load_config(config.as_deref(), Some("warn"))?;
            refuse_on_s3(&config, "maintenance status")?;
            let root = config.storage.filesystem.rootdirectory.clone();
            // The records are keys under the root, read through a driver on it (which
            // creates nothing).
            let fs = registry::storage::FsDriver::new(root.clone());
            let mut records = Vec::new();
            for t in Task::ALL {
                records.extend(gc::maintenance::last_record(&fs, t).await);
            }
            // Only reads: no lock is taken (nor its file created); a server that owns the
            // root answers on its admin socket, and a missing socket means none does.
            let socket = admin_socket(&root);
            let server = if socket.exists() {
                gc::admin::request(&socket, "GET", "/admin/maintenance")
                    .await
                    .ok()
                    .and_then(|(_, b)| serde_json::from_slice::<serde_json::Value>(&b).ok())
            } else {
                None
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "last": records, "server": server })
                    )?
                );
            } else {
                print_records(&records, false)?;
                match server {
                    Some(s) => println!("server: {}", s["counters"]),
                    None => println!("server: none owns {}", root.display()),
                }
            }
            Ok(())
        }
        MaintenanceAction::Start {
            scheduler,
            unit_dir,
            crontab_file,
            config,
        } => {
            let config =
                std::fs::canonicalize(&config).with_context(|| format!("{}", config.display()))?;
            let binary = std::env::current_exe().context("the path of this binary")?;
            match units::Scheduler::parse(&scheduler).map_err(anyhow::Error::msg)? {
                units::Scheduler::SystemdTimer => {
                    let activate = unit_dir.is_none();
                    let dir = unit_dir.unwrap_or_else(|| PathBuf::from("/etc/systemd/system"));
                    for p in units::install_systemd(&dir, &binary, &config, activate)
                        .map_err(anyhow::Error::msg)?
                    {
                        println!("wrote {}", p.display());
                    }
                }
                units::Scheduler::Crontab => {
                    units::install_crontab(crontab_file.as_deref(), &binary, &config)
                        .map_err(anyhow::Error::msg)?;
                    println!("crontab block installed");
                }
            }
            Ok(())
        }
        MaintenanceAction::Stop {
            scheduler,
            unit_dir,
            crontab_file,
            config: _,
        } => {
            match units::Scheduler::parse(&scheduler).map_err(anyhow::Error::msg)? {
                units::Scheduler::SystemdTimer => {
                    let activate = unit_dir.is_none();
                    let dir = unit_dir.unwrap_or_else(|| PathBuf::from("/etc/systemd/system"));
                    for p in units::remove_systemd(&dir, activate).map_err(anyhow::Error::msg)? {
                        println!("removed {}", p.display());
                    }
                }
                units::Scheduler::Crontab => {
                    units::remove_crontab(crontab_file.as_deref()).map_err(anyhow::Error::msg)?;
                    println!("crontab block removed");
                }
            }
            Ok(())
        }
    }
}

/// Raises the soft limit on open files to the hard one (as Go does at start-up, so
/// Distribution too): each connection takes a descriptor, and each upload or blob read
/// one more. Says so when even the hard limit is below `http.max_connections` plus
/// room for files: the limit, not the cap, is then what turns connections away.
fn raise_open_files_limit(max_connections: usize) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return;
        }
        if r.rlim_cur < r.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                r = raised;
            }
        }
    }
    let wanted = (max_connections as libc::rlim_t)
        .saturating_mul(2)
        .saturating_add(256);
    if r.rlim_cur < wanted {
        tracing::warn!(
            open_files_limit = r.rlim_cur,
            max_connections,
            "the open-file limit is below what http.max_connections connections may need \
             ({wanted}: one descriptor each, one more per upload or blob read, room for the \
             rest); raise LimitNOFILE (or ulimit -n), or lower http.max_connections"
        );
    }
}

/// Keeps glibc from handing request-body buffers back to the kernel between requests.
///
/// hyper reads a body into buffers of up to ~400 KiB. With glibc's defaults those are
/// returned to the kernel when freed (an arena is trimmed with `madvise`, or the buffer
/// was its own `mmap`), and every new buffer is faulted in again page by page: pushing
/// 2 GiB cost 260 000 page faults, a sixth of the server's CPU. With these two settings
/// the same pushes take 4 500 faults and 10-15% less server CPU, and peak RSS stays
/// where it was (about 27 MiB). Values already set in the environment
/// (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`) are left to win.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // Allocations below this come from the arenas rather than a fresh mmap each.
    const MMAP_THRESHOLD: libc::c_int = 4 << 20;
    // An arena keeps up to this much free memory for the next request to reuse.
    const TRIM_THRESHOLD: libc::c_int = 32 << 20;
    for (var, param, value) in [
        (
            "MALLOC_MMAP_THRESHOLD_",
            libc::M_MMAP_THRESHOLD,
            MMAP_THRESHOLD,
        ),
        (
            "MALLOC_TRIM_THRESHOLD_",
            libc::M_TRIM_THRESHOLD,
            TRIM_THRESHOLD,
        ),
    ] {
        if std::env::var_os(var).is_none() {
            // SAFETY: mallopt only sets allocator parameters; called before any thread
            // of ours starts.
            unsafe {
                libc::mallopt(param, value);
            }
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

/// Gives memory back after a burst. The tuning above lets each arena keep up to 32 MiB
/// free for the next request, and a busy server has an arena per thread or so: after
/// 100 manifest bodies of 4 MiB, 50 MiB stayed with the process. Every 5 s, when no
/// request is being served (so never in the middle of a push, which is what the
/// tuning is for), or after a minute in any case, `malloc_trim(0)` returns the free
/// memory of every arena to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn start_trimmer() {
    use std::time::{Duration, Instant};
    let spawned = std::thread::Builder::new()
        .name("drydock-trim".into())
        .spawn(|| {
            let mut last = Instant::now();
            loop {
                std::thread::sleep(Duration::from_secs(5));
                if registry::server::requests_in_flight() == 0
                    || last.elapsed() >= Duration::from_secs(60)
                {
                    // SAFETY: malloc_trim only returns free memory to the kernel.
                    unsafe { libc::malloc_trim(0) };
                    last = Instant::now();
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the thread that returns freed memory");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn start_trimmer() {}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut activated = None;
    if matches!(cli.command, Command::Serve { .. }) {
        tune_allocator();
        // Before any thread exists: listenfd clears LISTEN_PID/LISTEN_FDS.
        activated = activated_listener()?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Serve { config } => {
            let config = load_config(config.as_deref(), None)?;
            rt.block_on(serve(config, activated))
        }
        Command::GarbageCollect {
            dry_run,
            remove_untagged,
            grace,
            json,
            quiet,
            config,
        } => {
            let config = load_config(config.as_deref(), Some("warn"))?;
            let args = GcArgs {
                dry_run,
                remove_untagged,
                grace,
                json,
                quiet,
            };
            rt.block_on(garbage_collect(config, args))
        }
        Command::Maintenance { action } => rt.block_on(maintenance(action)),
    }
}
