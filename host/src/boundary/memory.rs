//! The host-wide memory budget every guest instance and every request's account draws on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Memory all guest instances of one host hold together (`QA_GUEST_MEMORY_TOTAL_MB`): their
/// linear memories, and the host bytes their requests' accounts hold ([`super::Account`]).
/// Each instance takes its growth from it and gives it all back when its store is dropped.
#[derive(Clone, Debug)]
pub struct MemoryBudget(Arc<Pool>);

#[derive(Debug)]
struct Pool {
    /// `None`: unbounded (each instance's own limit still applies).
    limit: Option<usize>,
    used: AtomicUsize,
}

impl MemoryBudget {
    pub fn new(limit: Option<usize>) -> Self {
        Self(Arc::new(Pool { limit, used: AtomicUsize::new(0) }))
    }

    pub fn limit(&self) -> Option<usize> {
        self.0.limit
    }

    /// Bytes the live instances hold now.
    pub fn in_use(&self) -> usize {
        self.0.used.load(Ordering::Acquire)
    }

    pub(crate) fn take(&self, bytes: usize) -> bool {
        let limit = self.0.limit.unwrap_or(usize::MAX);
        self.0.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| used.checked_add(bytes).filter(|&next| next <= limit)).is_ok()
    }

    pub(crate) fn give_back(&self, bytes: usize) {
        let _ = self.0.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| Some(used.saturating_sub(bytes)));
    }
}
