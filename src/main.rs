//! The `wsgate` binary: parse the command line, start the workers, wait for
//! SIGTERM/SIGINT, drain, exit 0. A second signal exits at once.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing_subscriber::EnvFilter;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::ValueEnum;
use wsgate::config::{ConfigError, Loaded, LogFormat};
use wsgate::{limits, systemd};

fn main() -> ExitCode {
    let loaded = match Loaded::from_args(std::env::args_os()) {
        Ok(l) => l,
        Err(ConfigError::Cli(e)) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
        Err(e) => {
            eprintln!("wsgate: {e}");
            return ExitCode::from(2);
        }
    };
    if loaded.config.print_config {
        print!("{}", loaded.effective_toml());
        return ExitCode::SUCCESS;
    }
    let config = loaded.config.clone();
    // RUST_LOG (the tracing convention) wins over --log-level; --log-level
    // was validated by the config, RUST_LOG is checked here.
    let rust_log = std::env::var("RUST_LOG").ok();
    let (filter, bad_rust_log) = match rust_log
        .as_deref()
        .map(|f| (f, wsgate::config::parse_log_level(f)))
    {
        Some((f, Ok(_))) => (f.to_string(), None),
        Some((_, Err(e))) => (config.log_level.clone(), Some(e)),
        None => (config.log_level.clone(), None),
    };
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour_logs())
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    if let Some(e) = bad_rust_log {
        tracing::warn!(
            "ignoring RUST_LOG: {e}; using --log-level {}",
            config.log_level
        );
    }
    for var in loaded.unknown_env_vars() {
        tracing::warn!(
            variable = %var.escape_debug(),
            "ignoring an environment variable that names no setting (settings are WSGATE_ + the flag in upper snake case, e.g. WSGATE_MAX_CONNECTIONS)"
        );
    }

    let nofile = match limits::raise_nofile_limit() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "could not read RLIMIT_NOFILE");
            0
        }
    };
    let workers = config.worker_count();
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let server = match wsgate::start(config.clone()) {
        Ok(s) => s,
        Err(e) => {
            // Each `StartError` names the setting (or resource) to fix.
            tracing::error!(listen = %config.listen, error = %e, "cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = Arc::new(server);
    let admin = server
        .admin_addr()
        .map_or_else(|| "off".to_string(), |a| a.to_string());
    let app = config
        .app
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_string());
    let capacity = limits::connection_capacity(nofile, workers);
    // Display forms only: this line is read by operators (and parsed as JSON
    // fields by log shippers). connection_capacity is how many connections
    // the open-files limit leaves room for.
    tracing::info!(
        admin = %admin,
        app = %app,
        workers,
        open_files_limit = nofile,
        connection_capacity = capacity,
        "wsgate listening on {}://{}{}",
        if config.tls_cert.is_some() { "wss" } else { "ws" },
        server.local_addr(),
        config.path,
    );

    // The first signal starts the drain; a second one exits at once.
    // SIGHUP re-reads the TLS certificate instead (never a shutdown).
    let (first_tx, first_rx) = crossbeam_channel::bounded::<()>(1);
    let reloader = Arc::downgrade(&server);
    std::thread::spawn(move || {
        let mut seen = 0;
        for sig in signals.forever() {
            if sig == SIGHUP {
                match reloader.upgrade().and_then(|s| s.reload_tls()) {
                    // The outcome (and a refused file's error) is logged by
                    // the reload itself.
                    Some(_) => {}
                    None => tracing::info!("SIGHUP: no TLS certificate to reload"),
                }
                continue;
            }
            seen += 1;
            if seen == 1 {
                tracing::info!(signal = sig, "shutting down: closing connections with 1001");
                let _ = first_tx.send(());
            } else {
                tracing::warn!("second signal: exiting now");
                std::process::exit(1);
            }
        }
    });
    systemd::ready(&format!("listening on {}", server.local_addr()));
    let watchdog_stop = Arc::new(AtomicBool::new(false));
    if let Some(interval) = systemd::watchdog_interval() {
        systemd::spawn_watchdog(Arc::downgrade(&server), interval, watchdog_stop.clone());
    }
    let drain_rx = server.drain_requested();
    crossbeam_channel::select! {
        recv(first_rx) -> _ => {}
        recv(drain_rx) -> _ => tracing::info!("shutting down: the admin API asked to drain"),
    }
    systemd::stopping();
    watchdog_stop.store(true, Ordering::Release);
    server.shutdown();
    // The watchdog holds the handle only for an instant at a time.
    let mut server = server;
    loop {
        match Arc::try_unwrap(server) {
            Ok(s) => break s.join(),
            Err(s) => {
                server = s;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
    tracing::info!("drained; bye");
    ExitCode::SUCCESS
}

/// ANSI colours only for a person at a terminal, and never with NO_COLOR set
/// (https://no-color.org): files, pipes and the journal get plain text.
fn colour_logs() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}
