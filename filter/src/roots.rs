//! The plugin instances (Envoy's root contexts) living in one VM, and
//! which one a request belongs to; the shell (`shell::roots`) serves it
//! with Envoy's workers.
//!
//! Usually a VM holds one. Envoy puts several in one VM when filters share
//! the module and VM settings but not the plugin configuration: two
//! listeners, an upstream instance beside the downstream one, or a
//! configuration update while the old listener drains. Envoy identifies an
//! instance by its whole plugin configuration, so a configuration applied
//! again (a rollback: A, then B, then A) while the first A still drains
//! gets A's live root context back without any callback; only
//! `proxy_on_context_create`, which names each request's root context,
//! tells that requests follow A again. Requests follow their own instance;
//! one whose host does not say follows the newest.
//!
//! Instances end at `proxy_on_done` (Envoy's shutdown of a root context)
//! or, should a host not say, when they stop ticking. A VM runs at most
//! `MAX_ROOTS`, each with its worker's tables: configuration pushed faster
//! than listeners drain would otherwise grow memory. Past it the instance
//! least recently used by a request (never the newest) is set aside: its
//! worker and tables are freed, its parsed configuration is kept, and the
//! first request that names it again brings it back with that
//! configuration (and empty tables, which shared data refills). So a
//! rollback is in force whatever came between, and a new configuration
//! always starts. The instances set aside are bounded too
//! (`MAX_SET_ASIDE`, `MAX_SET_ASIDE_BYTES` of configuration text); past
//! that the one set aside longest ago is forgotten, and only its requests
//! pass through unobserved.

use std::rc::Rc;

use crate::config::Config;

/// Ticks come every 100 ms; an instance silent this long was deleted.
const SILENT_MS: u64 = 5_000;
/// Plugin instances one VM runs at most: each holds a worker's tables.
pub const MAX_ROOTS: usize = 64;
/// Instances set aside at `MAX_ROOTS` whose configuration a VM keeps.
pub const MAX_SET_ASIDE: usize = 256;
/// Their configuration text (and plugin names), in bytes, at most.
pub const MAX_SET_ASIDE_BYTES: usize = 4 << 20;
/// Warnings about setting aside, and about bringing back, come each at
/// most this often (instances beyond `MAX_ROOTS` that all serve requests
/// take turns).
const QUIET_MS: u64 = 1_000;

pub struct Root<W> {
    pub context_id: u32,
    /// `plugin_name`: also the prefix of the shared-data keys.
    pub name: String,
    /// `None` until a configuration was accepted, and while set aside.
    pub worker: Option<W>,
    /// The configuration in force (the worker's) and its text's size in
    /// bytes: what brings the instance back after it was set aside.
    pub config: Option<(Rc<Config>, usize)>,
    /// Its last tick.
    last_seen_ms: u64,
    /// When a request of its own last started, or it was configured.
    last_used_ms: u64,
}

impl<W> Root<W> {
    /// What keeping it set aside costs, as accounted.
    fn footprint(&self) -> usize {
        self.name.len() + self.config.as_ref().map_or(0, |(_, bytes)| *bytes)
    }
}

pub struct Roots<W> {
    /// Running, in order of their first configuration (or return); the
    /// last is the newest.
    roots: Vec<Root<W>>,
    /// Set aside at the limit, oldest first: no worker, a configuration.
    set_aside: Vec<Root<W>>,
    /// `footprint` summed over `set_aside`.
    set_aside_bytes: usize,
    /// Instances set aside since the last `take_dropped`.
    dropped: u32,
    /// Until when the warnings on setting aside (0) and bringing back (1)
    /// stay quiet.
    quiet_until_ms: [u64; 2],
}

impl<W> Default for Roots<W> {
    fn default() -> Self {
        Roots {
            roots: Vec::new(),
            set_aside: Vec::new(),
            set_aside_bytes: 0,
            dropped: 0,
            quiet_until_ms: [0; 2],
        }
    }
}

impl<W> Roots<W> {
    /// The instance with this context id, running: created if new (named
    /// by `name`), brought back if set aside; either may set aside the
    /// least recently used one.
    pub fn get_or_create(
        &mut self,
        context_id: u32,
        now: u64,
        name: impl FnOnce() -> String,
    ) -> &mut Root<W> {
        if let Some(position) = self.position(context_id) {
            let root = &mut self.roots[position];
            root.last_seen_ms = now;
            root.last_used_ms = now;
            return &mut self.roots[position];
        }
        let root = self.take_set_aside(context_id).unwrap_or_else(|| Root {
            context_id,
            name: name(),
            worker: None,
            config: None,
            last_seen_ms: now,
            last_used_ms: now,
        });
        self.run(root, now)
    }

    /// Adds `root` to the running ones, as the newest.
    fn run(&mut self, mut root: Root<W>, now: u64) -> &mut Root<W> {
        root.last_seen_ms = now;
        root.last_used_ms = now;
        if self.roots.len() >= MAX_ROOTS {
            self.set_aside_least_used(now);
        }
        if !self.roots.is_empty() {
            log::info!(
                "meshguard: {} plugin instances in this VM (a listener update while the old listener drains, or filters with their own configuration); each request follows its own",
                self.roots.len() + 1
            );
        }
        self.roots.push(root);
        let last = self.roots.len() - 1;
        &mut self.roots[last]
    }

    /// Running plugin instances.
    pub fn count(&self) -> usize {
        self.roots.len()
    }

    /// Plugin instances set aside since the last call.
    pub fn take_dropped(&mut self) -> u32 {
        std::mem::take(&mut self.dropped)
    }

    /// Whether a warning of this `kind` may be logged now (see `QUIET_MS`).
    fn loud(&mut self, kind: usize, now: u64) -> bool {
        let Some(until) = self.quiet_until_ms.get_mut(kind) else {
            return false;
        };
        let loud = now >= *until;
        if loud {
            *until = now.saturating_add(QUIET_MS);
        }
        loud
    }

    fn set_aside_least_used(&mut self, now: u64) {
        // Never the newest: its configuration is the one in force.
        let older = self.roots.len().saturating_sub(1);
        let Some(position) = (0..older).min_by_key(|&i| self.roots[i].last_used_ms) else {
            return;
        };
        let mut root = self.roots.remove(position);
        root.worker = None;
        self.dropped += 1;
        if self.loud(0, now) {
            log::warn!(
                "meshguard: {MAX_ROOTS} plugin configurations live in this VM (updates come faster than listeners drain); the one least recently used (context {}) is set aside: its tables are freed until a request of its own restarts it",
                root.context_id
            );
        }
        if root.config.is_none() {
            // Never configured: its requests pass through in any case.
            return;
        }
        self.set_aside_bytes += root.footprint();
        self.set_aside.push(root);
        while self.set_aside.len() > MAX_SET_ASIDE || self.set_aside_bytes > MAX_SET_ASIDE_BYTES {
            if self.set_aside.is_empty() {
                self.set_aside_bytes = 0;
                break;
            }
            let gone = self.set_aside.remove(0);
            self.set_aside_bytes = self.set_aside_bytes.saturating_sub(gone.footprint());
            log::warn!(
                "meshguard: too many plugin instances set aside in this VM; the oldest (context {}) is forgotten and its requests pass through unobserved",
                gone.context_id
            );
        }
    }

    fn take_set_aside(&mut self, context_id: u32) -> Option<Root<W>> {
        let position = self
            .set_aside
            .iter()
            .position(|r| r.context_id == context_id)?;
        let root = self.set_aside.remove(position);
        self.set_aside_bytes = self.set_aside_bytes.saturating_sub(root.footprint());
        Some(root)
    }

    fn position(&self, context_id: u32) -> Option<usize> {
        self.roots.iter().position(|r| r.context_id == context_id)
    }

    /// Envoy shut the instance down (its last filter is gone); any other
    /// context id is ignored.
    pub fn remove(&mut self, context_id: u32) {
        self.roots.retain(|r| r.context_id != context_id);
        self.take_set_aside(context_id);
    }

    /// A request of `root_context_id` started. An instance set aside comes
    /// back, returned without a worker for the caller to start from its
    /// configuration.
    pub fn adopt(&mut self, root_context_id: u32, now: u64) -> Option<&mut Root<W>> {
        if let Some(position) = self.position(root_context_id) {
            self.roots[position].last_used_ms = now;
            return None;
        }
        let root = self.take_set_aside(root_context_id)?;
        if self.loud(1, now) {
            log::warn!(
                "meshguard: a request of plugin instance {root_context_id} (set aside at the limit) brings it back: its configuration is in force again, its tables start empty"
            );
        }
        Some(self.run(root, now))
    }

    /// A tick from `context_id` at `now`: instances that stopped ticking
    /// were deleted by Envoy. Only a running instance is returned.
    pub fn tick(&mut self, context_id: u32, now: u64) -> Option<&mut Root<W>> {
        let live = |r: &Root<W>| {
            r.context_id == context_id || now.saturating_sub(r.last_seen_ms) < SILENT_MS
        };
        self.roots.retain(live);
        let kept = self.set_aside.len();
        self.set_aside.retain(live);
        if self.set_aside.len() != kept {
            self.set_aside_bytes = self.set_aside.iter().map(Root::footprint).sum();
        }
        if let Some(root) = self
            .set_aside
            .iter_mut()
            .find(|r| r.context_id == context_id)
        {
            root.last_seen_ms = now;
        }
        let position = self.position(context_id)?;
        let root = &mut self.roots[position];
        root.last_seen_ms = now;
        Some(root)
    }

    /// The worker a request of root context `root` (if the host named it)
    /// belongs to: its own instance's, or the newest configured one's when
    /// the host did not say. A request of an instance set aside or
    /// forgotten has none: it may be an upstream instance's attempt, which
    /// the newest must not take for a request.
    pub fn for_root(&mut self, root: Option<u32>) -> Option<&mut W> {
        let position = self.serving(root)?;
        self.roots[position].worker.as_mut()
    }

    #[cfg(test)]
    pub fn serves(&self, root: Option<u32>) -> bool {
        self.serving(root)
            .is_some_and(|p| self.roots[p].worker.is_some())
    }

    fn serving(&self, root: Option<u32>) -> Option<usize> {
        match root {
            Some(id) => self.position(id),
            None => self.roots.iter().rposition(|r| r.worker.is_some()),
        }
    }

    /// Some running worker, if any.
    pub fn any_worker(&self) -> Option<&W> {
        self.roots.iter().find_map(|r| r.worker.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker that says which configuration built it.
    type Roots = super::Roots<Rc<Config>>;

    fn configure(roots: &mut Roots, id: u32, now: u64) {
        let root = roots.get_or_create(id, now, || format!("p{id}"));
        let config = Rc::new(Config::default());
        root.worker = Some(Rc::clone(&config));
        root.config = Some((config, 100));
    }

    /// What the shell does with a request of `id`.
    fn request(roots: &mut Roots, id: u32, now: u64) -> bool {
        if let Some(root) = roots.adopt(id, now) {
            root.worker = root.config.as_ref().map(|(c, _)| Rc::clone(c));
        }
        roots.for_root(Some(id)).is_some()
    }

    #[test]
    fn an_instance_set_aside_at_the_limit_comes_back_with_its_configuration() {
        let mut roots = Roots::default();
        // A (1), then 70 updates, each used by a request.
        configure(&mut roots, 1, 0);
        assert!(request(&mut roots, 1, 1));
        for id in 2..72 {
            configure(&mut roots, id, u64::from(id) * 10);
            assert!(request(&mut roots, id, u64::from(id) * 10 + 1));
        }
        assert_eq!(roots.count(), MAX_ROOTS);
        assert_eq!(roots.take_dropped(), 71 - 64);
        assert_eq!(roots.take_dropped(), 0);
        // A again: Envoy names A's root context, with no configure.
        let config = roots.set_aside[0]
            .config
            .as_ref()
            .map(|(c, _)| Rc::clone(c));
        assert!(request(&mut roots, 1, 1_000));
        let back = roots.for_root(Some(1)).map(|w| Rc::clone(w));
        assert!(back.zip(config).is_some_and(|(a, b)| Rc::ptr_eq(&a, &b)));
        assert_eq!(roots.count(), MAX_ROOTS);
        assert_eq!(roots.take_dropped(), 1, "room made for it");
        // The newest (71) was never set aside; everything stays served.
        for id in 1..72 {
            assert!(request(&mut roots, id, 2_000), "instance {id}");
        }
        assert_eq!(roots.set_aside.len(), 7);
        let accounted = |roots: &Roots| roots.set_aside.iter().map(Root::footprint).sum::<usize>();
        assert_eq!(roots.set_aside_bytes, accounted(&roots));
        // Done: gone from either list.
        let aside = roots.set_aside[0].context_id;
        let running = roots.roots[0].context_id;
        roots.remove(aside);
        roots.remove(running);
        assert!(!request(&mut roots, aside, 2_001));
        assert!(!request(&mut roots, running, 2_001));
        assert_eq!(roots.set_aside.len(), 6);
        assert_eq!(roots.set_aside_bytes, accounted(&roots));
    }

    #[test]
    fn set_aside_instances_are_bounded_and_silent_ones_go() {
        let mut roots = Roots::default();
        let total = MAX_ROOTS + MAX_SET_ASIDE + 10;
        for id in 1..=total as u32 {
            configure(&mut roots, id, u64::from(id));
        }
        assert_eq!(roots.count(), MAX_ROOTS);
        assert_eq!(roots.set_aside.len(), MAX_SET_ASIDE);
        // The first ten are forgotten; the next comes back.
        assert!(!request(&mut roots, 10, total as u64));
        assert!(request(&mut roots, 11, total as u64));
        // Ticks keep the set-aside ones that tick; the others go.
        let now = total as u64 + SILENT_MS;
        assert!(roots.tick(12, now).is_none());
        assert_eq!(roots.set_aside.len(), 1);
        assert_eq!(roots.set_aside_bytes, roots.set_aside[0].footprint());
        assert_eq!(roots.count(), 0, "no running one ticked");
        assert!(request(&mut roots, 12, now + 1));
        // A configuration too large to keep is forgotten at once.
        let mut roots = Roots::default();
        for id in 1..=MAX_ROOTS as u32 + 1 {
            configure(&mut roots, id, u64::from(id));
            if id == 1 {
                if let Some((_, bytes)) = &mut roots.roots[0].config {
                    *bytes = MAX_SET_ASIDE_BYTES + 1;
                }
            }
        }
        assert!(roots.set_aside.is_empty());
        assert_eq!(roots.set_aside_bytes, 0);
        assert!(!request(&mut roots, 1, 1_000));
    }

    #[test]
    fn requests_the_host_did_not_name_follow_the_newest_configured() {
        let mut roots = Roots::default();
        assert!(roots.for_root(None).is_none());
        configure(&mut roots, 1, 0);
        roots.get_or_create(2, 1, || "p".into());
        assert!(roots.serves(None));
        assert!(roots.serves(Some(1)));
        assert!(!roots.serves(Some(2)), "not configured");
        assert!(!roots.serves(Some(3)));
        assert!(roots.any_worker().is_some());
    }
}
