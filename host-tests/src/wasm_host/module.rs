//! Loading and compiling the plugin module once per process.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use wasmtime::{Config, Engine, InstancePre, Linker, Module};

use super::imports;
use super::vm::VmState;

/// A compiled plugin module, ready to instantiate as many VMs as needed.
/// Cheap to clone.
#[derive(Clone)]
pub struct PluginModule(Arc<Inner>);

struct Inner {
    path: PathBuf,
    engine: Engine,
    module: Module,
    pre: InstancePre<VmState>,
}

impl PluginModule {
    /// Compiles the module at `path` and links the host functions to it.
    pub fn load(path: &Path) -> Result<PluginModule, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut config = Config::new();
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&config).map_err(|e| format!("wasmtime engine: {e:?}"))?;
        let module = match cached(&engine, &bytes) {
            Some(module) => module,
            None => {
                let module = Module::new(&engine, &bytes)
                    .map_err(|e| format!("cannot compile {}: {e:?}", path.display()))?;
                store_in_cache(&module, &bytes);
                module
            }
        };
        let mut linker = Linker::new(&engine);
        imports::link(&mut linker, &module)
            .map_err(|e| format!("cannot link host functions: {e:?}"))?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| format!("cannot pre-instantiate {}: {e:?}", path.display()))?;
        Ok(PluginModule(Arc::new(Inner {
            path: path.to_path_buf(),
            engine,
            module,
            pre,
        })))
    }

    /// The module named by `MESHGUARD_WASM`, compiled once per process
    /// (compiling takes a second or more; every test shares the result).
    /// Panics with instructions when the variable is unset or wrong, so a
    /// test without its module fails instead of passing silently.
    pub fn from_env() -> PluginModule {
        static CACHE: OnceLock<Result<PluginModule, String>> = OnceLock::new();
        CACHE
            .get_or_init(|| {
                let path = crate::MESHGUARD_WASM.path()?;
                PluginModule::load(&path)
            })
            .clone()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn path(&self) -> &Path {
        &self.0.path
    }

    pub fn engine(&self) -> &Engine {
        &self.0.engine
    }

    pub fn module(&self) -> &Module {
        &self.0.module
    }

    pub(super) fn instance_pre(&self) -> &InstancePre<VmState> {
        &self.0.pre
    }

    /// `(module, name)` of every import, for reports.
    pub fn imports(&self) -> Vec<(String, String)> {
        self.0
            .module
            .imports()
            .map(|i| (i.module().to_string(), i.name().to_string()))
            .collect()
    }

    /// Names of the module's exported functions.
    pub fn exported_functions(&self) -> Vec<String> {
        self.0
            .module
            .exports()
            .filter(|e| matches!(e.ty(), wasmtime::ExternType::Func(_)))
            .map(|e| e.name().to_string())
            .collect()
    }
}

/// Compiling the module takes seconds in a debug build and every test
/// binary would do it again, so compiled code is kept next to the test
/// binaries (`target/<profile>/wasm-host-cache/`), keyed by the module's
/// bytes and the wasmtime version. `MESHGUARD_WASM_CACHE=0` turns it off.
fn cache_path(bytes: &[u8]) -> Option<PathBuf> {
    if std::env::var_os("MESHGUARD_WASM_CACHE").is_some_and(|v| v == "0") {
        return None;
    }
    // FNV-1a: stable across runs and toolchains, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes.iter().chain(WASMTIME_VERSION.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/<test binary> or target/<profile>/<bin>
    let mut dir = exe.parent()?;
    if dir.ends_with("deps") {
        dir = dir.parent()?;
    }
    Some(
        dir.join("wasm-host-cache")
            .join(format!("{hash:016x}-{}.cwasm", bytes.len())),
    )
}

const WASMTIME_VERSION: &str = "wasmtime-48.0.8";

fn cached(engine: &Engine, bytes: &[u8]) -> Option<Module> {
    let path = cache_path(bytes)?;
    if !path.is_file() {
        return None;
    }
    // SAFETY: the file was written by `store_in_cache` below from a module
    // this code compiled, in the build's own target directory; wasmtime
    // checks its version and engine settings and refuses a mismatch (we
    // then recompile).
    unsafe { Module::deserialize_file(engine, &path) }.ok()
}

fn store_in_cache(module: &Module, bytes: &[u8]) {
    let Some(path) = cache_path(bytes) else {
        return;
    };
    let Ok(compiled) = module.serialize() else {
        return;
    };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // Write then rename, so a concurrent reader never sees half a file.
    let temp = path.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&temp, compiled).is_ok() {
        let _ = std::fs::rename(&temp, &path);
    }
}
