//! A do-nothing proxy-wasm HTTP filter: a root context that hands Envoy an
//! HTTP context per request, whose callbacks keep the SDK's defaults
//! (continue, no host calls). Envoy still enters the VM for every request
//! phase, so this is the floor any Rust wasm filter pays (`make bench`).
//!
//! With the plugin configuration `host-calls` it also makes exactly the host
//! calls meshguard makes per request on its healthy path (`:status` on the
//! response, `upstream.address` at log time) and nothing else: a diagnostic
//! that separates the cost of those calls from the cost of meshguard's own
//! logic. `BENCH_DIAGNOSTIC` picks other calls to price (see `Calls`).

#[cfg(target_arch = "wasm32")]
mod filter {
    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{BufferType, ContextType, LogLevel, MapType};
    use std::rc::Rc;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
            Box::new(NoopRoot { calls: Rc::new(Calls::default()) })
        });
    }}

    /// The data-returning host calls meshguard makes per request on its
    /// healthy path (the cluster comes from its address cache).
    const MESHGUARD_HEALTHY_PATH: &str = "hdr::status prop:upstream.address";

    /// Host calls to make per request, from the plugin configuration.
    #[derive(Default)]
    struct Calls {
        /// Property paths read at log time.
        log_properties: Vec<Vec<String>>,
        /// Response header names read in the response-headers callback.
        response_headers: Vec<String>,
        /// CEL expressions (Envoy's `expr_create`) evaluated at log time.
        expressions: Vec<String>,
        tokens: Vec<u32>,
    }

    impl Calls {
        /// `host-calls` is meshguard's healthy path; otherwise words
        /// `prop:a.b` (a property read at log time), `hdr:name` (a response
        /// header read) and `expr:cel` (a CEL expression evaluated at log
        /// time through Envoy's `expr_evaluate`, `+` for ` + `).
        fn parse(text: &str) -> Calls {
            let text = if text == "host-calls" {
                MESHGUARD_HEALTHY_PATH
            } else {
                text
            };
            let mut calls = Calls::default();
            for word in text.split_whitespace() {
                if let Some(path) = word.strip_prefix("prop:") {
                    calls
                        .log_properties
                        .push(path.split('.').map(str::to_string).collect());
                } else if let Some(name) = word.strip_prefix("hdr:") {
                    calls.response_headers.push(name.to_string());
                } else if let Some(expression) = word.strip_prefix("expr:") {
                    // Words hold no spaces: `+` stands for CEL's ` + `.
                    calls.expressions.push(expression.replace('+', " + "));
                }
            }
            calls
        }
    }

    struct NoopRoot {
        calls: Rc<Calls>,
    }

    impl Context for NoopRoot {}

    impl RootContext for NoopRoot {
        fn on_configure(&mut self, _size: usize) -> bool {
            if let Ok(Some(c)) =
                hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            {
                let mut calls = Calls::parse(&String::from_utf8_lossy(&c));
                for e in &calls.expressions {
                    match hostcalls::call_foreign_function("expr_create", Some(e.as_bytes())) {
                        Ok(Some(t)) if t.len() == 4 => calls
                            .tokens
                            .push(u32::from_le_bytes([t[0], t[1], t[2], t[3]])),
                        other => {
                            let _ =
                                hostcalls::log(LogLevel::Error, &format!("expr_create: {other:?}"));
                        }
                    }
                }
                self.calls = Rc::new(calls);
            }
            true
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }

        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Noop {
                calls: Rc::clone(&self.calls),
            }))
        }
    }

    struct Noop {
        calls: Rc<Calls>,
    }

    impl Context for Noop {}

    impl HttpContext for Noop {
        fn on_http_response_headers(
            &mut self,
            _headers: usize,
            _end_of_stream: bool,
        ) -> proxy_wasm::types::Action {
            for name in &self.calls.response_headers {
                let _ = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name);
            }
            proxy_wasm::types::Action::Continue
        }

        fn on_log(&mut self) {
            for path in &self.calls.log_properties {
                let _ = hostcalls::get_property(path.iter().map(String::as_str).collect());
            }
            for token in &self.calls.tokens {
                let r =
                    hostcalls::call_foreign_function("expr_evaluate", Some(&token.to_le_bytes()));
                // The first answer is logged, to check the expression works.
                thread_local!(static SHOWN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
                if !SHOWN.with(|s| s.replace(true)) {
                    let text = r.map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()));
                    let _ = hostcalls::log(LogLevel::Warn, &format!("expr_evaluate: {text:?}"));
                }
            }
        }
    }
}
