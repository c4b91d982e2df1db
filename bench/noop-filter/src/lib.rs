//! A do-nothing proxy-wasm HTTP filter: a root context that hands Envoy an
//! HTTP context per request, whose callbacks keep the SDK's defaults
//! (continue, no host calls). Envoy still enters the VM for every request
//! phase, so this is the floor any Rust wasm filter pays (`make bench`).
//!
//! With the plugin configuration `host-calls` it also makes exactly the host
//! calls meshguard makes per request on its healthy path (read
//! `upstream.address`, `response.code` and `xds.cluster_name` at log time)
//! and nothing else: a diagnostic that separates the cost of those calls
//! from the cost of meshguard's own logic.

#[cfg(target_arch = "wasm32")]
mod filter {
    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{BufferType, ContextType, LogLevel};

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
            Box::new(NoopRoot { host_calls: false })
        });
    }}

    struct NoopRoot {
        host_calls: bool,
    }

    impl Context for NoopRoot {}

    impl RootContext for NoopRoot {
        fn on_configure(&mut self, _size: usize) -> bool {
            if let Ok(Some(c)) =
                hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            {
                self.host_calls = c.as_slice() == b"host-calls";
            }
            true
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }

        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Noop {
                host_calls: self.host_calls,
            }))
        }
    }

    struct Noop {
        host_calls: bool,
    }

    impl Context for Noop {}

    impl HttpContext for Noop {
        fn on_log(&mut self) {
            if self.host_calls {
                let _ = hostcalls::get_property(vec!["upstream", "address"]);
                let _ = hostcalls::get_property(vec!["response", "code"]);
                let _ = hostcalls::get_property(vec!["xds", "cluster_name"]);
            }
        }
    }
}
