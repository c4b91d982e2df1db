//! The proxy-wasm shell: reads what Envoy knows about a request, hands it
//! to the core, and writes back the steering header. Kept thin; every host
//! error is handled, nothing here may panic.

mod abi;
mod attempt;
mod envoy_host;
mod host;
mod props;
mod roots;
mod stream;

use std::fmt::Write;
use std::rc::Rc;

use crate::config::Config;
use crate::state::worker::TICK_MS;
use envoy_host::{EnvoyHost, Worker};
use roots::Root;

/// Once per VM, before any callback.
fn init() {
    let _ = log::set_logger(&HostLogger);
    log::set_max_level(log::LevelFilter::Info);
    std::panic::set_hook(Box::new(|info| {
        log_line(host::Level::Error, &format!("meshguard: panic: {info}"));
    }));
}

/// Writes a line to Envoy's log with control characters escaped (`\n`,
/// `\u{1b}`): configuration values, cluster and route names and addresses
/// end up in log lines, and a raw CR/LF in one would forge another line.
fn log_line(level: host::Level, text: &str) {
    if !text.contains(char::is_control) {
        return host::log(level, text);
    }
    let mut escaped = String::new();
    for c in text.chars() {
        if c.is_control() {
            let _ = write!(escaped, "\\x{:02x}", c as u32);
        } else {
            escaped.push(c);
        }
    }
    host::log(level, &escaped);
}

struct HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Error => host::Level::Error,
            log::Level::Warn => host::Level::Warn,
            log::Level::Info => host::Level::Info,
            log::Level::Debug => host::Level::Debug,
            log::Level::Trace => host::Level::Trace,
        };
        log_line(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

fn sync_log_level() {
    let filter = match host::log_level() {
        Ok(0) => log::LevelFilter::Trace,
        Ok(1) => log::LevelFilter::Debug,
        Ok(2) => log::LevelFilter::Info,
        Ok(3) => log::LevelFilter::Warn,
        Ok(_) => log::LevelFilter::Error,
        Err(_) => log::LevelFilter::Info,
    };
    log::set_max_level(filter);
}

/// Adds one to a global counter (`meshguard.<metric>`), outside any
/// worker: for events of the VM itself, which no worker's batched metrics
/// see.
fn count_global(metric: crate::metrics::Metric) {
    if let Ok(id) = host::define_metric(0, &metric.global()) {
        let _ = host::increment_metric(id, 1);
    }
}

/// 256 bits of the host's randomness (WASI `random_get`).
fn id_key() -> Option<[u64; 4]> {
    let mut key = [0u64; 4];
    for word in &mut key {
        *word = host::random_u64().ok()?;
    }
    Some(key)
}

/// A plugin instance's (new) configuration: parsed, and either put in
/// force or refused with the previous one kept.
fn configure(root: &mut Root, size: usize) -> bool {
    sync_log_level();
    let bytes = match host::plugin_configuration(size) {
        Ok(bytes) => bytes.unwrap_or_default(),
        Err(status) => {
            log::error!(
                "meshguard: cannot read the plugin configuration (status {})",
                status.0
            );
            return false;
        }
    };
    let config = match Config::parse(&bytes) {
        Ok(config) => Rc::new(config),
        Err(error) => {
            count_global(crate::metrics::Metric::ConfigRejected);
            let kept = if root.worker.is_some() {
                "keeping the previous configuration"
            } else {
                "filter not started"
            };
            log::error!("meshguard: invalid plugin configuration, {kept}: {error}");
            return false;
        }
    };
    if let Some(worker) = &root.worker {
        if worker.config_base().mode != config.mode {
            // Two filters with one root_id share one root context in a VM:
            // an upstream instance's configuration would turn the
            // downstream one into an attempt counter.
            log::error!(
                "meshguard: invalid plugin configuration, keeping the previous configuration: mode: this plugin instance (root_id `{}`) runs in the other mode; give the upstream instance its own root_id",
                props::plugin_root_id().unwrap_or_default()
            );
            return false;
        }
    }
    match &mut root.worker {
        Some(worker) => worker.reconfigure(Rc::clone(&config)),
        None => root.worker = Some(new_worker(&config, &root.name)),
    }
    root.config = Some((config, bytes.len()));
    key_request_ids(root);
    if let Err(status) = host::set_tick_period_ms(TICK_MS) {
        log::warn!(
            "meshguard: no tick period (status {}); grades will be slow to spread across workers",
            status.0
        );
    }
    true
}

/// An instance set aside at the limit (`crate::roots`) gets a worker
/// again, from the configuration it had.
fn start(root: &mut Root) {
    let Some((config, _)) = &root.config else {
        return;
    };
    root.worker = Some(new_worker(config, &root.name));
    key_request_ids(root);
}

fn new_worker(config: &Rc<Config>, name: &str) -> Worker {
    let now = host::now_ms().unwrap_or(0);
    // Workers start within the same millisecond: seed each from the host's
    // entropy, or request ids would repeat across them.
    let seed = host::random_u64().unwrap_or(0) ^ now;
    Worker::new(EnvoyHost, Rc::clone(config), name, now, seed)
}

/// Request ids are keyed with 256 bits of the host's entropy, so that
/// seeing ids does not reveal the next ones; drawn once, when a
/// configuration first generates ids.
fn key_request_ids(root: &mut Root) {
    let Some(worker) = &mut root.worker else {
        return;
    };
    let base = worker.config_base();
    let generates = base.headers.request_id.generate
        || base
            .overrides
            .iter()
            .any(|o| o.config.headers.request_id.generate);
    if generates && !worker.request_ids_keyed() {
        match id_key() {
            Some(key) => worker.key_request_ids(key),
            None => log::warn!(
                "meshguard: no randomness from the host: generated request ids are guessable"
            ),
        }
    }
}
