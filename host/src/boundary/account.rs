//! The accountant of one request: every byte the host holds because of the request's guest
//! (wasi-nn tensors with their dimension lists and names, execution contexts, outputs, error
//! text, the answers lifted out of the guest) is charged here before the host makes it, and
//! refused when it would pass the request's budget (`QA_GUEST_HOST_MB`). The budget also
//! bounds what wasmtime copies into the host for one call (its "hostcall fuel"), so no single
//! import or result can bring in more than the request has left.
//!
//! Where a host-wide memory budget is set (`QA_GUEST_MEMORY_TOTAL_MB`), every charge is also
//! taken from it, beside the instances' linear memories: the documented total covers both.
//!
//! The accountant also times the host's own work in each import (not ONNX Runtime's run,
//! which the deadline terminates), so tests can hold every call to a bound.

use super::MemoryBudget;
use std::time::{Duration, Instant};

/// Why a charge was refused: the request's own budget, or the host-wide one that other
/// requests hold (`crowded`: the same request may fit later).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} needs {wanted} bytes of host memory; this request's guest holds {held} of its {budget} (QA_GUEST_HOST_MB){}",
    if *.crowded { ", and the host-wide budget (QA_GUEST_MEMORY_TOTAL_MB) is taken by other requests" } else { "" }
)]
pub struct Refused {
    pub what: &'static str,
    pub wanted: u64,
    pub held: u64,
    pub budget: u64,
    pub crowded: bool,
}

/// One request's host bytes and host time.
#[derive(Debug)]
pub struct Account {
    budget: u64,
    held: u64,
    peak: u64,
    shared: MemoryBudget,
    /// The last refusal, so a trap that reports it is classified as the budget.
    refused: Option<Refused>,
    calls: u64,
    longest_call: Duration,
}

impl Account {
    pub fn new(budget: u64, shared: MemoryBudget) -> Self {
        Self { budget, held: 0, peak: 0, shared, refused: None, calls: 0, longest_call: Duration::ZERO }
    }

    /// Takes `bytes` for `what` before the host allocates them, or refuses.
    pub fn charge(&mut self, bytes: u64, what: &'static str) -> Result<(), Refused> {
        let refused = |crowded| Refused { what, wanted: bytes, held: self.held, budget: self.budget, crowded };
        let total = self.held.checked_add(bytes).filter(|&total| total <= self.budget);
        let refusal = match total {
            None => refused(false),
            Some(total) if self.shared.take(usize::try_from(bytes).unwrap_or(usize::MAX)) => {
                self.held = total;
                self.peak = self.peak.max(total);
                return Ok(());
            }
            Some(_) => refused(true),
        };
        self.refused = Some(refusal.clone());
        Err(refusal)
    }

    /// Gives back what a charge took, once the host dropped what it paid for.
    pub fn release(&mut self, bytes: u64) {
        let bytes = bytes.min(self.held);
        self.held -= bytes;
        self.shared.give_back(usize::try_from(bytes).unwrap_or(usize::MAX));
    }

    /// What may still be charged: also the most wasmtime may copy in for one call.
    pub fn remaining(&self) -> u64 {
        self.budget - self.held
    }

    pub fn held(&self) -> u64 {
        self.held
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// The most this request ever held at once.
    pub fn peak(&self) -> u64 {
        self.peak
    }

    /// The last charge refused, if any.
    pub fn refused(&self) -> Option<&Refused> {
        self.refused.as_ref()
    }

    /// Records one import's host work since `started`, less `waited` (a wait the deadline
    /// cuts, such as an inference run).
    pub fn record_call(&mut self, started: Instant, waited: Duration) {
        self.calls += 1;
        self.longest_call = self.longest_call.max(started.elapsed().saturating_sub(waited));
    }

    /// Logs what the request cost the host (tests read this line).
    pub fn report(&self, guest: &str) {
        tracing::debug!(
            guest,
            peak_bytes = self.peak,
            budget_bytes = self.budget,
            host_calls = self.calls,
            longest_call_us = self.longest_call.as_micros() as u64,
            refused = self.refused.is_some(),
            "guest request accounted"
        );
    }
}

impl Drop for Account {
    /// The request is over: everything it held goes back to the host-wide budget.
    fn drop(&mut self) {
        self.shared.give_back(usize::try_from(self.held).unwrap_or(usize::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_past_the_budget_are_refused_and_remembered() {
        let mut account = Account::new(100, MemoryBudget::new(None));
        account.charge(60, "a tensor").unwrap();
        assert_eq!((account.held(), account.remaining()), (60, 40));
        let refusal = account.charge(41, "a dimension list").unwrap_err();
        assert_eq!((refusal.wanted, refusal.held, refusal.budget, refusal.crowded), (41, 60, 100, false));
        assert!(refusal.to_string().contains("a dimension list needs 41 bytes"), "{refusal}");
        assert_eq!(account.held(), 60, "a refused charge takes nothing");
        account.charge(40, "error text").unwrap();
        assert_eq!(account.remaining(), 0);
        account.release(100);
        assert_eq!((account.held(), account.peak()), (0, 100));
        assert_eq!(account.refused().map(|r| r.what), Some("a dimension list"), "the refusal is kept");
        assert!(account.charge(u64::MAX, "overflow").is_err(), "a sum past u64 is a refusal, not a wrap");
        assert_eq!(account.refused().map(|r| r.what), Some("overflow"), "the last refusal is kept");
    }

    /// Found by the mutation run (2026-12-07): nothing checked the budget reported or the
    /// host calls counted (the log line `report` writes is read by `tests/boundary.rs`).
    #[test]
    fn host_calls_are_counted_and_the_longest_kept_less_its_wait() {
        let mut account = Account::new(100, MemoryBudget::new(None));
        assert_eq!(account.budget(), 100);
        let long_ago = Instant::now().checked_sub(Duration::from_millis(50)).expect("a clock 50 ms old");
        account.record_call(long_ago, Duration::from_millis(20));
        account.record_call(Instant::now(), Duration::ZERO);
        assert_eq!(account.calls, 2);
        // 50 ms or more since `long_ago`, less the 20 ms wait; the second call took about none.
        assert!(account.longest_call >= Duration::from_millis(30), "{:?}", account.longest_call);
        assert!(account.longest_call < Duration::from_secs(30), "{:?}", account.longest_call);
    }

    #[test]
    fn charges_also_take_from_the_host_wide_budget_and_give_it_back() {
        let shared = MemoryBudget::new(Some(150));
        let mut first = Account::new(100, shared.clone());
        let mut second = Account::new(100, shared.clone());
        first.charge(100, "tensors").unwrap();
        let refusal = second.charge(60, "tensors").unwrap_err();
        assert!(refusal.crowded && refusal.to_string().contains("other requests"), "{refusal}");
        second.charge(50, "tensors").unwrap();
        assert_eq!(shared.in_use(), 150);
        first.release(30);
        assert_eq!(shared.in_use(), 120);
        drop(first);
        assert_eq!(shared.in_use(), 50, "a dropped account gives back what it held");
        drop(second);
        assert_eq!(shared.in_use(), 0);
    }
}
