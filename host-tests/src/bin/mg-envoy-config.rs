//! mg-envoy-config: renders `envoy/demo.yaml.tmpl` to stdout for the demo
//! (`scripts/run-demo.sh`, `make run`) with the renderer the tests and the
//! bench use, `host_tests::envoy::render`: one set of rules for every
//! Envoy config made from the template.
//!
//! ```text
//! ADMIN_PORT=9901 LISTEN_PORT=10000 UPSTREAM1_PORT=18081 UPSTREAM2_PORT=18082 UPSTREAM3_PORT=18083 \
//!     WASM_PATH=/path/meshguard.opt.wasm PLUGIN_CONFIG='{"detection":{}}' mg-envoy-config
//! mg-envoy-config --no-wasm    # without the meshguard filter (no WASM_PATH, PLUGIN_CONFIG)
//! ```
//! `FALLBACK_PORT` is optional: the `fallback` cluster then uses u3's port.

use std::io::Write;
use std::process::ExitCode;

use host_tests::envoy::{render, TemplateVars, WasmPlugin, TEMPLATE};

fn var(name: &str) -> Result<String, String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("{name} is not set"))
}

fn port(name: &str) -> Result<u16, String> {
    let v = var(name)?;
    v.parse().map_err(|_| format!("{name}={v}: not a port"))
}

fn vars(no_wasm: bool) -> Result<TemplateVars, String> {
    Ok(TemplateVars {
        admin_port: port("ADMIN_PORT")?,
        listen_port: port("LISTEN_PORT")?,
        upstream_ports: [
            port("UPSTREAM1_PORT")?,
            port("UPSTREAM2_PORT")?,
            port("UPSTREAM3_PORT")?,
        ],
        fallback_port: match var("FALLBACK_PORT") {
            Ok(_) => Some(port("FALLBACK_PORT")?),
            Err(_) => None,
        },
        wasm: if no_wasm {
            None
        } else {
            Some(WasmPlugin {
                wasm_path: var("WASM_PATH")?.into(),
                config: var("PLUGIN_CONFIG")?,
            })
        },
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let no_wasm = match args.as_slice() {
        [] => false,
        [flag] if flag == "--no-wasm" => true,
        _ => {
            eprintln!(
                "usage: mg-envoy-config [--no-wasm]   (template variables in the environment)"
            );
            return ExitCode::from(2);
        }
    };
    match vars(no_wasm).and_then(|v| render(TEMPLATE, &v)) {
        Ok(yaml) => {
            let mut out = std::io::stdout().lock();
            if out
                .write_all(yaml.as_bytes())
                .and_then(|()| out.flush())
                .is_err()
            {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mg-envoy-config: {e}");
            ExitCode::FAILURE
        }
    }
}
