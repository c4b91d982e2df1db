//! One worker's cache of one record ("unit"): an upstream service's hosts
//! and breaker, or, for routes under an override with thresholds of its
//! own, that override's share of the service; with the outcomes not yet
//! written, the members seen and the steering plan.

use std::collections::HashMap;
use std::rc::Rc;

use super::members::{FixedState, Members};
use super::plan::Plan;
use super::store::Slot;
use crate::config::Config;
use crate::metrics::FAILURE_KINDS;
use crate::service::{Observation, Pending, ServiceHealth};

pub struct Unit {
    /// Shared-data name: the cluster, plus the override's scope if any.
    pub key: String,
    pub cluster: String,
    pub scope: String,
    pub config: Rc<Config>,
    pub slot: Slot,
    pub snapshot: ServiceHealth,
    /// Outcomes of watched hosts, and failures of any host, not yet written.
    pub pending: HashMap<Rc<str>, Pending, FixedState>,
    /// Every outcome, for the breaker, not yet written.
    pub breaker_pending: Pending,
    pub members: Members,
    /// Members this worker found or saw leave, not yet in the shared list.
    pub members_found: Vec<Rc<str>>,
    pub members_left: Vec<Rc<str>>,
    /// Of those, the ones steering showed gone (not merely idle): other
    /// workers drop them too.
    pub members_gone: Vec<Rc<str>>,
    /// Hosts back from an ejection (and when that ejection ended) that this
    /// worker has sent a first request to.
    pub returns_checked: Vec<(Rc<str>, u64)>,
    /// Version of the shared member list this worker has merged.
    pub member_list_seen: u64,
    pub plan: Option<Plan>,
    /// The watched hosts' weights the plan was built from.
    pub plan_basis: Vec<u8>,
    /// Some watched host is below full weight.
    pub steers: bool,
    /// Percent of the service's hosts this worker does not know (its plan
    /// leaves at least that share to Envoy's load balancer).
    pub unknown_percent: u8,
    /// Discovery requests lately, and how many of them found a host this
    /// worker did not know.
    pub discovery: (u16, u16),
    /// Discovery's share of steered requests now, in per mille (see
    /// `Worker::steer`).
    pub discovery_per_mille: u16,
    /// A host is ejected for timeouts or resets: discovery pauses, as a
    /// request it leaves to Envoy could wait out a timeout there, or lose
    /// its answer.
    pub discovery_paused: bool,
    /// When time alone next changes the record or its weights.
    pub next_change_ms: Option<u64>,
    pub last_touch_ms: u64,
    pub last_used_ms: u64,
    pub counts: Counts,
    /// Hosts whose `host_state` gauge was last set to a state other than
    /// Healthy: set back when they stop being watched.
    pub graded_gauges: Vec<String>,
    /// Until then steered requests name their retries' hosts too, because
    /// retried requests were seen (see `Worker::observe_at`); and whether
    /// the plan in force was built for it.
    pub attribute_until_ms: u64,
    pub attributing: bool,
    /// Requests not steered since `upstream.request_attempt_count` was
    /// last read (it is read on one in `ATTEMPT_SAMPLE`).
    pub unsampled: u16,
    /// The last steering header value written, `first,second,third`, and
    /// the hosts after the first: reused, so steering allocates nothing.
    pub steer_value: Vec<u8>,
    pub alternates: Vec<Rc<str>>,
}

/// Per-unit counters kept on the request path (no host call) and added to
/// Envoy's stats on the tick.
#[derive(Default)]
pub struct Counts {
    pub requests: u64,
    pub failures: [u64; FAILURE_KINDS.len()],
    pub steered: u64,
    pub local_replies: u64,
    pub not_tracked: u64,
    pub inferred_attempts: u64,
    pub unattributed_retries: u64,
}

impl Counts {
    pub fn is_empty(&self) -> bool {
        self.requests == 0
            && self.steered == 0
            && self.local_replies == 0
            && self.not_tracked == 0
            && self.inferred_attempts == 0
            && self.unattributed_retries == 0
            && self.failures.iter().all(|n| *n == 0)
    }
}

impl Unit {
    pub fn new(
        key: String,
        cluster: &str,
        scope: &str,
        config: Rc<Config>,
        slot: Slot,
        snapshot: ServiceHealth,
        now: u64,
    ) -> Self {
        Unit {
            key,
            cluster: cluster.to_string(),
            scope: scope.to_string(),
            config,
            slot,
            snapshot,
            pending: HashMap::default(),
            breaker_pending: Pending::default(),
            members: Members::default(),
            members_found: Vec::new(),
            members_left: Vec::new(),
            members_gone: Vec::new(),
            member_list_seen: 0,
            returns_checked: Vec::new(),
            plan: None,
            plan_basis: Vec::new(),
            steers: false,
            unknown_percent: 0,
            discovery: (0, 0),
            discovery_per_mille: 0,
            discovery_paused: false,
            next_change_ms: None,
            last_touch_ms: now,
            last_used_ms: now,
            counts: Counts::default(),
            graded_gauges: Vec::new(),
            attribute_until_ms: 0,
            attributing: false,
            unsampled: 0,
            steer_value: Vec::new(),
            alternates: Vec::new(),
        }
    }

    /// Queues a host's outcome for the next write, if it can move a grade
    /// (a failure, a slow call) or the host is watched already.
    /// Records an outcome against its host; a sampled success counts
    /// `weight` times (see `Worker::sample_success`).
    pub fn record_outcome(
        &mut self,
        address: &str,
        observation: Observation,
        weight: u16,
        config: &Config,
    ) {
        let watched = self.snapshot.host(address).is_some();
        let evidence = observation.outcome.failed() || observation.outcome.slow;
        // The successes before this evidence: a host's history when this
        // gives it a record (a watched host's are in its window already).
        let before = if evidence {
            self.members.take_successes(address)
        } else {
            0
        };
        if !evidence && !watched {
            return;
        }
        if let Some(pending) = self.pending.get_mut(address) {
            pending.add_n(observation, weight);
            return;
        }
        if self.pending.len() >= usize::from(config.limits.max_watched_hosts_per_service) {
            // More distinct failing hosts in one flush interval than a
            // service may watch: drop the outcome rather than grow.
            self.counts.not_tracked += 1;
            return;
        }
        let key = self
            .members
            .address(address)
            .unwrap_or_else(|| Rc::from(address));
        let mut pending = Pending::default();
        if !watched {
            // A host's first evidence: bring the successes before it, so
            // its window starts from its history and not from a failure.
            let cap = config.detection.window_size.saturating_sub(1);
            pending.history = u32::from(before.min(cap));
        }
        pending.add_n(observation, weight);
        self.pending.insert(key, pending);
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
            || !self.breaker_pending.is_empty()
            || !self.members_found.is_empty()
            || !self.members_left.is_empty()
    }
}

pub fn unit_key(cluster: &str, scope: &str) -> String {
    if scope.is_empty() {
        cluster.to_string()
    } else {
        format!("{cluster} [{scope}]")
    }
}

/// The cluster and scope a record key stands for.
pub fn parse_key(key: &str) -> (&str, &str) {
    key.strip_suffix(']')
        .and_then(|k| k.rsplit_once(" ["))
        .unwrap_or((key, ""))
}
