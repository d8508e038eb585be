//! A candidate guest beside the serving one, without redeploying the host:
//! - **shadow** (`QA_GUEST_SHADOW`): for a share of requests, once the serving guest has
//!   answered, the candidate answers the same request; its answer is compared with the served
//!   one (same best text and span, score difference) and recorded, never returned;
//! - **canary** (`QA_GUEST_CANARY`): a share of requests, chosen by a hash of the request id
//!   (so the share holds across many Lambda environments), is answered by the candidate.
//!
//! Every call on either guest is recorded in a sliding window per guest. The candidate is
//! rolled back (dropped until its file changes) when its failure rate exceeds the serving
//! guest's by more than a margin, or its median latency the serving guest's by a ratio; and
//! promoted (it serves every request, until the serving guest's own file changes) after a
//! number of clean calls, if asked to. Each call writes a metric line whose only dimension
//! besides `service` is `guest` (`serving` or `candidate`), so the series stay two.

use crate::api::{Questions, RolloutStatus};
use crate::guest::{Answer, GuestError, GuestLocation, GuestModel, GuestQaError, GuestRuntime, Options, Response, SwappableGuest};
use crate::model_cache::LoadedModel;
use crate::nn::{Call as NnCall, Priority};
use crate::telemetry::emf::{Metrics, now_ms};
use crate::telemetry::prom::PromMetrics;
use serde_json::{Map, json};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Shadow calls that may run at once: more shadowed requests than this skip their shadow
/// call, so a candidate that spins until its deadline cannot multiply the host's work.
pub const MAX_SHADOW_CALLS: usize = 4;

/// How the candidate takes part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Shadow,
    Canary,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Shadow => "shadow",
            Mode::Canary => "canary",
        }
    }
}

/// When the candidate is dropped or promoted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// Calls per guest the rates and medians are taken over (`QA_ROLLOUT_WINDOW`).
    pub window: usize,
    /// Candidate calls before any judgement (`QA_ROLLOUT_MIN_CALLS`): a candidate that fails
    /// every call is dropped after exactly this many.
    pub min_calls: usize,
    /// How far the candidate's failure rate may exceed the serving guest's, as a fraction
    /// (`QA_ROLLOUT_FAILURE_MARGIN_PCT` / 100).
    pub failure_margin: f64,
    /// How many times the serving guest's median latency the candidate's may be
    /// (`QA_ROLLOUT_LATENCY_RATIO`), judged once both have `min_calls` answered calls.
    pub latency_ratio: f64,
    /// Clean candidate calls in a row after which it is promoted (`QA_ROLLOUT_PROMOTE_AFTER`);
    /// `None` never promotes.
    pub promote_after: Option<u64>,
    /// Under Lambda, how long a response may wait for its shadow call
    /// (`QA_GUEST_SHADOW_MAX_DELAY_MS`); a shadow call cut by it is not held against the
    /// candidate.
    pub shadow_max_delay: Duration,
    /// The deadline of a shadow call (`QA_GUEST_SHADOW_DEADLINE_MS`), well below the serving
    /// guest's: a candidate that hangs frees its instance and its inference lane soon. Past
    /// it the call failed (under `serve`; under Lambda the wait bound cuts first).
    pub shadow_deadline: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            window: 50,
            min_calls: 10,
            failure_margin: 0.10,
            latency_ratio: 2.0,
            promote_after: None,
            shadow_max_delay: Duration::from_millis(1000),
            shadow_deadline: Duration::from_millis(5000),
        }
    }
}

/// The candidate as configured: its `.wasm` (a path, or an `s3://` object), the share of
/// requests it takes, and the policy.
#[derive(Clone, Debug)]
pub struct RolloutSettings {
    pub mode: Mode,
    pub candidate: GuestLocation,
    /// Percent of requests, 0 to 100.
    pub percent: f64,
    pub policy: Policy,
}

impl RolloutSettings {
    /// The variable that names the candidate.
    pub fn setting(&self) -> &'static str {
        match self.mode {
            Mode::Shadow => "QA_GUEST_SHADOW",
            Mode::Canary => "QA_GUEST_CANARY",
        }
    }
}

/// Which guest a request runs on.
pub enum Route {
    Serving,
    /// The candidate answers.
    Canary(Arc<GuestRuntime>),
    /// The serving guest answers, then the candidate runs the same request.
    Shadow(Arc<GuestRuntime>),
}

/// Whose call is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Serving,
    Candidate,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Serving => "serving",
            Role::Candidate => "candidate",
        }
    }
}

/// A guest call's outcome as a rollout counts it: its answers (one per question), or why
/// there are none.
pub type Answered = Result<Vec<Result<Response, GuestError>>, GuestError>;

/// One guest call as the request path makes it: the questions over one context, on the
/// request's model, with its options and deadline.
pub struct GuestCall<'a> {
    pub model: &'a Arc<LoadedModel>,
    /// The model's name, as the guest loads it.
    pub name: &'a str,
    pub questions: Questions,
    pub context: &'a str,
    pub options: Options,
    pub deadline: Duration,
}

impl GuestCall<'_> {
    /// Asks `guest`, at serving priority; one entry per question.
    pub async fn ask(&self, guest: &Arc<GuestRuntime>) -> Answered {
        ask(guest, &self.model.guest_model(self.name), &self.questions, self.context, self.options, self.deadline).await
    }
}

async fn ask(
    guest: &Arc<GuestRuntime>,
    model: &GuestModel,
    questions: &Questions,
    context: &str,
    options: Options,
    deadline: Duration,
) -> Answered {
    match questions {
        Questions::One(question) => guest.ask(model, question, context, options, deadline).await.map(|r| vec![Ok(r)]),
        Questions::Many(questions) => guest.ask_many(model, questions, context, options, deadline).await,
    }
}

/// What a guest call gave the request: the answers, which guest gave them and how long its
/// call took (a shadow call after it not included).
pub struct GuestRun {
    pub answered: Answered,
    pub guest_version: String,
    pub took: Duration,
}

/// How long a shadow call may take: under Lambda (`invocation`: when the request started and
/// the time it was given) no more than the invocation has left once the serving guest
/// answered; and never more than half the serving guest's deadline.
pub struct ShadowBound {
    pub invocation: Option<(Instant, Duration)>,
    pub serving_deadline: Duration,
}

impl Rollout {
    /// Runs `call` on the guest this request routes to (the serving guest, or the candidate for
    /// a canary share) and records it; for a shadow share the candidate then runs the same
    /// call (under Lambda now, within the wait bound and what is left of the invocation;
    /// elsewhere in the background).
    pub async fn ask(self: &Arc<Self>, serving: Arc<GuestRuntime>, call: GuestCall<'_>, request_id: &str, bound: ShadowBound) -> GuestRun {
        let started = Instant::now();
        let route = self.route(request_id);
        let (guest, role) = match &route {
            Route::Canary(candidate) => (candidate.clone(), Role::Candidate),
            _ => (serving, Role::Serving),
        };
        let answered = call.ask(&guest).await;
        let took = started.elapsed();
        self.record(role, &guest, &answered, took);
        if let (Route::Shadow(candidate), Some(served)) = (route, best_answers(&answered))
            && let Some(slot) = self.shadow_slot()
        {
            // Its own call: a shadow's inference runs on the model's shadow lane, and is shed
            // while serving calls wait ([`crate::nn::schedule`]).
            let lane = NnCall::new(Priority::Shadow);
            let shadow = Shadow {
                rollout: self.clone(),
                candidate,
                model: call.model.guest_model_for(call.name, lane.clone()),
                call: lane,
                questions: call.questions,
                context: call.context.to_string(),
                options: call.options,
                request_id: request_id.to_string(),
                served,
                _slot: slot,
            };
            // Well below the serving deadline, whatever the settings: at most half of it.
            let cap = self.policy.shadow_deadline.min(bound.serving_deadline / 2);
            match bound.invocation {
                // Under Lambda nothing runs between invocations: the shadow call runs now,
                // within the wait bound and what is left of the invocation.
                Some((request_started, budget)) => {
                    let left = budget.saturating_sub(request_started.elapsed());
                    shadow.run(self.policy.shadow_max_delay.min(left).min(cap), true).await;
                }
                None => {
                    tokio::spawn(shadow.run(cap, false));
                }
            }
        }
        GuestRun { answered, guest_version: guest.id.clone(), took }
    }
}

/// A request run again on the candidate, after the serving guest answered it.
struct Shadow {
    rollout: Arc<Rollout>,
    candidate: Arc<GuestRuntime>,
    model: GuestModel,
    questions: Questions,
    context: String,
    options: Options,
    request_id: String,
    /// The best answer the serving guest gave each question.
    served: Vec<Option<Answer>>,
    /// The shadow call's standing in inference scheduling: whether its runs were shed.
    call: Arc<NnCall>,
    /// Held while the shadow call runs (see [`MAX_SHADOW_CALLS`]).
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Shadow {
    /// Runs the candidate within `bound` and records how it compares with what was served. When
    /// `cut_is_not_its_fault` (a bound shorter than the guest's deadline, under Lambda), a
    /// call stopped by the bound is not counted; nor is one whose inference was shed to make
    /// room for serving calls, or one whose deadline passed while its inference waited for the
    /// shadow lane.
    async fn run(self, bound: Duration, cut_is_not_its_fault: bool) {
        let started = Instant::now();
        let shadow = ask(&self.candidate, &self.model, &self.questions, &self.context, self.options, bound).await;
        // A deadline that passed while the candidate's inference still waited for the shadow
        // lane (which yields to every other thread: a host busy compiling or serving starves
        // it) measured the host, not the candidate.
        let timed_out = matches!(shadow, Err(GuestError::Timeout(_)));
        let cut = (timed_out && (cut_is_not_its_fault || self.call.waits_for_lane())) || self.call.was_shed();
        self.rollout.record_shadow(&self.request_id, &self.candidate, &self.served, (!cut).then_some(&shadow), started.elapsed());
    }
}

/// The guest, not the caller or the host, is at fault: it trapped, ran out of time or memory,
/// broke the answer contract or failed inference. Refused input and a full pool are not
/// held against it.
pub fn guest_fault(error: &GuestError) -> bool {
    match error {
        GuestError::Qa(qa) => matches!(qa, GuestQaError::Inference(_) | GuestQaError::ModelInvalid(_) | GuestQaError::ModelNotFound(_)),
        GuestError::Busy(_) | GuestError::Crowded { .. } => false,
        _ => true,
    }
}

fn faulted(answered: &Answered) -> bool {
    match answered {
        Err(error) => guest_fault(error),
        Ok(results) => results.iter().any(|r| r.as_ref().is_err_and(guest_fault)),
    }
}

/// One guest's recent calls: whether each failed, and how long the answered ones took.
#[derive(Default)]
struct Window {
    calls: VecDeque<(bool, Duration)>,
}

impl Window {
    fn push(&mut self, failed: bool, latency: Duration, cap: usize) {
        if self.calls.len() == cap.max(1) {
            self.calls.pop_front();
        }
        self.calls.push_back((failed, latency));
    }

    fn failure_rate(&self) -> f64 {
        if self.calls.is_empty() {
            return 0.0;
        }
        self.calls.iter().filter(|(failed, _)| *failed).count() as f64 / self.calls.len() as f64
    }

    /// Median latency of the answered calls, when there are at least `min` of them.
    fn median(&self, min: usize) -> Option<Duration> {
        let mut answered: Vec<Duration> = self.calls.iter().filter(|(failed, _)| !failed).map(|(_, d)| *d).collect();
        if answered.len() < min.max(1) {
            return None;
        }
        answered.sort();
        Some(answered[answered.len() / 2])
    }
}

/// Where the candidate stands.
#[derive(Default)]
struct State {
    /// The candidate the windows are about (its `id`); a new file starts afresh.
    candidate: String,
    /// The serving guest `serving` is about.
    serving_id: String,
    serving: Window,
    calls: Window,
    /// Clean candidate calls in a row.
    clean: u64,
    shadowed: u64,
    agreed: u64,
    /// Set when the candidate was rolled back or promoted: it takes no more requests.
    ended: Option<&'static str>,
}

/// What recording a call decided.
#[derive(Debug, PartialEq)]
enum Verdict {
    Keep,
    RollBack(String),
    Promote,
}

impl State {
    fn judge(&self, policy: &Policy) -> Verdict {
        if self.calls.calls.len() >= policy.min_calls.max(1) {
            let (candidate, serving) = (self.calls.failure_rate(), self.serving.failure_rate());
            if candidate > serving + policy.failure_margin {
                return Verdict::RollBack(format!(
                    "failure rate {:.0}% over its last {} calls, the serving guest's {:.0}% (margin {:.0} points)",
                    candidate * 100.0,
                    self.calls.calls.len(),
                    serving * 100.0,
                    policy.failure_margin * 100.0
                ));
            }
            if let (Some(candidate), Some(serving)) = (self.calls.median(policy.min_calls), self.serving.median(policy.min_calls))
                && candidate.as_secs_f64() > serving.as_secs_f64() * policy.latency_ratio
            {
                return Verdict::RollBack(format!(
                    "median latency {} ms, the serving guest's {} ms (ratio limit {})",
                    candidate.as_millis(),
                    serving.as_millis(),
                    policy.latency_ratio
                ));
            }
        }
        match policy.promote_after {
            Some(after) if self.clean >= after => Verdict::Promote,
            _ => Verdict::Keep,
        }
    }
}

/// The serving guest, the candidate and what is known of the candidate so far.
pub struct Rollout {
    serving: Arc<SwappableGuest>,
    candidate: Arc<SwappableGuest>,
    mode: Mode,
    /// The candidate's share in hundredths of a percent (0 to 10,000).
    share: u64,
    policy: Policy,
    state: Mutex<State>,
    metrics: Metrics,
    /// The same calls, counted for `GET /metrics`.
    prom: Arc<PromMetrics>,
    shadow_calls: Arc<tokio::sync::Semaphore>,
}

impl Rollout {
    pub fn new(
        serving: Arc<SwappableGuest>,
        candidate: Arc<SwappableGuest>,
        settings: &RolloutSettings,
        metrics: Metrics,
        prom: Arc<PromMetrics>,
    ) -> Self {
        let state = State { candidate: candidate.current().id.clone(), ..State::default() };
        Self {
            serving,
            candidate,
            mode: settings.mode,
            share: (settings.percent.clamp(0.0, 100.0) * 100.0).round() as u64,
            policy: settings.policy,
            state: Mutex::new(state),
            metrics,
            prom,
            shadow_calls: Arc::new(tokio::sync::Semaphore::new(MAX_SHADOW_CALLS)),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The candidate guest, as its file or object is tracked.
    pub fn candidate(&self) -> &Arc<SwappableGuest> {
        &self.candidate
    }

    /// A slot for one shadow call, if fewer than [`MAX_SHADOW_CALLS`] are running.
    pub fn shadow_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let slot = self.shadow_calls.clone().try_acquire_owned().ok();
        if slot.is_none() {
            tracing::debug!("shadow call skipped: {MAX_SHADOW_CALLS} are running");
        }
        slot
    }

    /// The guest `request_id` runs on. The same id always gets the same route while the
    /// candidate takes part, on every host.
    pub fn route(&self, request_id: &str) -> Route {
        let Some(candidate) = self.taking_part() else { return Route::Serving };
        if !selected(request_id, self.share) {
            return Route::Serving;
        }
        match self.mode {
            Mode::Canary => Route::Canary(candidate),
            Mode::Shadow => Route::Shadow(candidate),
        }
    }

    /// The candidate, unless it was rolled back or promoted. A changed candidate file (swapped
    /// in by its [`SwappableGuest`]) starts afresh.
    fn taking_part(&self) -> Option<Arc<GuestRuntime>> {
        let candidate = self.candidate.current();
        let mut state = self.state.lock().ok()?;
        if state.candidate != candidate.id {
            tracing::info!(candidate = %candidate.id, previous = %state.candidate, mode = self.mode.name(), "new candidate guest; its record starts afresh");
            *state = State { candidate: candidate.id.clone(), ..State::default() };
        }
        state.ended.is_none().then_some(candidate)
    }

    /// Records a call of `role`'s guest and acts on the verdict. A call refused because the
    /// pool or the memory budget was full says nothing about the guest and is not recorded.
    pub fn record(&self, role: Role, guest: &GuestRuntime, answered: &Answered, latency: Duration) {
        if matches!(answered, Err(GuestError::Busy(_) | GuestError::Crowded { .. })) {
            return;
        }
        let failed = faulted(answered);
        self.emit(role, guest, &[("GuestCalls", "Count", 1.0), ("GuestFailures", "Count", f64::from(u8::from(failed)))], latency);
        self.prom.guest_call(role.name(), failed);
        self.count(role, guest, failed, latency);
    }

    fn count(&self, role: Role, guest: &GuestRuntime, failed: bool, latency: Duration) {
        let Ok(mut state) = self.state.lock() else { return };
        match role {
            Role::Serving => {
                // A serving guest swapped in since is judged afresh.
                if state.serving_id != guest.id {
                    state.serving_id = guest.id.clone();
                    state.serving = Window::default();
                }
                state.serving.push(failed, latency, self.policy.window);
            }
            // A call on a candidate that has since been replaced says nothing of the new one.
            Role::Candidate if guest.id != state.candidate || state.ended.is_some() => return,
            Role::Candidate => {
                state.calls.push(failed, latency, self.policy.window);
                state.clean = if failed { 0 } else { state.clean + 1 };
            }
        }
        if state.ended.is_some() {
            return;
        }
        match state.judge(&self.policy) {
            Verdict::Keep => {}
            Verdict::RollBack(reason) => {
                state.ended = Some("rolled back");
                tracing::warn!(candidate = %state.candidate, mode = self.mode.name(), %reason, "candidate guest rolled back; it takes no requests until its file changes");
                drop(state);
                self.emit(Role::Candidate, guest, &[("GuestRollbacks", "Count", 1.0)], Duration::ZERO);
            }
            Verdict::Promote => {
                state.ended = Some("promoted");
                let clean = state.clean;
                drop(state);
                let candidate = self.candidate.current();
                self.serving.promote(candidate.clone());
                tracing::info!(guest = %candidate.id, clean_calls = clean, mode = self.mode.name(), "candidate guest promoted; it now serves every request");
                self.emit(Role::Candidate, &candidate, &[("GuestPromotions", "Count", 1.0)], Duration::ZERO);
            }
        }
    }

    /// Compares a shadow call with what was served and records it. `None`: the call was cut
    /// short by the response's wait bound and says nothing about the candidate.
    pub fn record_shadow(
        &self,
        request_id: &str,
        candidate: &GuestRuntime,
        served: &[Option<Answer>],
        shadow: Option<&Answered>,
        latency: Duration,
    ) {
        let Some(shadow) = shadow.filter(|s| !matches!(s, Err(GuestError::Busy(_) | GuestError::Crowded { .. }))) else {
            tracing::info!(request_id, candidate = %candidate.id, "shadow call cut by the response's wait bound (or shed for serving calls, or still waiting for the shadow lane, or no instance free); not counted");
            return;
        };
        // The served guest answered this very input: a refusal by the candidate is its fault.
        let failed = match shadow {
            Err(_) => true,
            Ok(results) => results.iter().zip(served).any(|(r, served)| r.as_ref().is_err_and(|e| served.is_some() || guest_fault(e))),
        };
        // Counted before the log line, so a reader of that line finds it in `/metrics`.
        self.prom.guest_call(Role::Candidate.name(), failed);
        let comparison = compare(served, shadow);
        let mut metrics = vec![("GuestCalls", "Count", 1.0), ("GuestFailures", "Count", f64::from(u8::from(failed)))];
        if let Some((agree, score_diff)) = comparison {
            metrics.push(("ShadowAgreement", "Count", f64::from(u8::from(agree))));
            metrics.push(("ShadowScoreDiff", "None", score_diff));
            self.prom.shadow_compared(agree);
            let rate = self.state.lock().ok().filter(|s| s.candidate == candidate.id).map(|mut s| {
                s.shadowed += 1;
                s.agreed += u64::from(agree);
                s.agreed as f64 / s.shadowed as f64
            });
            tracing::info!(request_id, candidate = %candidate.id, agree, score_diff, agreement = rate, ms = latency.as_secs_f64() * 1e3, "shadow compared");
        } else {
            tracing::info!(request_id, candidate = %candidate.id, failed, ms = latency.as_secs_f64() * 1e3, "shadow call failed");
        }
        self.emit(Role::Candidate, candidate, &metrics, latency);
        self.count(Role::Candidate, candidate, failed, latency);
    }

    /// Where the rollout stands, for `/health` and `/metrics`.
    pub fn status(&self) -> RolloutStatus {
        let state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        RolloutStatus {
            mode: self.mode.name(),
            candidate: state.candidate.clone(),
            state: state.ended.unwrap_or("taking part"),
            percent: self.share as f64 / 100.0,
            calls: state.calls.calls.len(),
            failure_rate: state.calls.failure_rate(),
            shadow_agreement: (state.shadowed > 0).then(|| state.agreed as f64 / state.shadowed as f64),
        }
    }

    fn emit(&self, role: Role, guest: &GuestRuntime, metrics: &[(&str, &str, f64)], latency: Duration) {
        let mut properties = Map::new();
        properties.insert("guest_version".into(), json!(guest.id));
        properties.insert("rollout".into(), json!(self.mode.name()));
        let mut all = metrics.to_vec();
        if !latency.is_zero() {
            all.push(("GuestLatency", "Milliseconds", latency.as_secs_f64() * 1e3));
        }
        self.metrics.emit(&self.metrics.line(&[("guest", role.name())], &all, properties, now_ms()));
    }
}

/// Whether `request_id` falls in a share of `share` hundredths of a percent: a hash every
/// host computes alike (SHA-256, not the process-seeded std hasher).
fn selected(request_id: &str, share: u64) -> bool {
    let digest = Sha256::digest(request_id.as_bytes());
    let bucket = u64::from_be_bytes(digest[..8].try_into().unwrap_or_default()) % 10_000;
    bucket < share
}

/// The best answer of each question of an answered call (`None` for a question without
/// one); `None` when the call failed.
pub fn best_answers(answered: &Answered) -> Option<Vec<Option<Answer>>> {
    let results = answered.as_ref().ok()?;
    Some(results.iter().map(|r| r.as_ref().ok().and_then(|r| r.answers.first().cloned())).collect())
}

/// Whether a shadow call's best answers agree with the served ones (same text and span for
/// every question) and the largest difference of their scores; `None` when the shadow call
/// failed.
fn compare(served: &[Option<Answer>], shadow: &Answered) -> Option<(bool, f64)> {
    let shadow = best_answers(shadow)?;
    if served.len() != shadow.len() {
        return Some((false, 0.0));
    }
    let mut agree = true;
    let mut diff: f64 = 0.0;
    for (a, b) in served.iter().zip(shadow) {
        match (a, b) {
            (Some(a), Some(b)) => {
                agree &= a.text == b.text && a.start == b.start && a.end == b.end;
                diff = diff.max((a.score - b.score).abs());
            }
            (None, None) => {}
            _ => agree = false,
        }
    }
    Some((agree, diff))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::{AnswerError, PhaseTimings};

    fn answered(text: &str, start: u32, score: f64) -> Answered {
        let answer = Answer { text: text.into(), score, start, end: start + text.len() as u32 };
        Ok(vec![Ok(Response { answers: vec![answer], timings: PhaseTimings::default(), windows: 1 })])
    }

    /// The rule as docs/operations.md's rollout policy states it, in its numbers: a default
    /// changed here fails until docs/operations.md and this test follow.
    #[test]
    fn the_policy_is_the_documented_one() {
        let policy = Policy::default();
        assert_eq!((policy.window, policy.min_calls, policy.promote_after), (50, 10, None));
        assert_eq!((policy.failure_margin, policy.latency_ratio), (0.10, 2.0));
        assert_eq!((policy.shadow_max_delay, policy.shadow_deadline), (Duration::from_millis(1000), Duration::from_millis(5000)));
        assert_eq!(MAX_SHADOW_CALLS, 4, "at most 4 shadow calls run at once");
    }

    #[test]
    fn the_share_is_a_stable_hash_of_the_request_id() {
        let ids: Vec<String> = (0..10_000).map(|i| format!("req-{i}")).collect();
        let picked = ids.iter().filter(|id| selected(id, 2_500)).count();
        assert!((2_300..2_700).contains(&picked), "25% of 10,000 ids, got {picked}");
        assert!(ids.iter().all(|id| selected(id, 2_500) == selected(id, 2_500)));
        assert!(ids.iter().all(|id| !selected(id, 0) && selected(id, 10_000)));
    }

    #[test]
    fn answers_agree_on_text_and_span_and_report_the_score_difference() {
        let served = best_answers(&answered("1886", 10, 0.9)).unwrap();
        assert_eq!(compare(&served, &answered("1886", 10, 0.7)).map(|(a, d)| (a, (d * 10.0).round())), Some((true, 2.0)));
        assert_eq!(compare(&served, &answered("1886", 40, 0.9)), Some((false, 0.0)), "another span");
        assert_eq!(compare(&served, &Err(GuestError::Trap("t".into()))), None);
    }

    #[test]
    fn refused_input_and_a_full_pool_are_not_the_guests_fault() {
        assert!(!guest_fault(&GuestError::Qa(GuestQaError::InvalidInput("empty".into()))));
        assert!(!guest_fault(&GuestError::Busy(4)));
        assert!(guest_fault(&GuestError::Trap("unreachable".into())));
        assert!(guest_fault(&GuestError::Timeout(Duration::from_secs(1))));
        assert!(guest_fault(&GuestError::BadAnswer(AnswerError::TooMany { got: 2, top_k: 1 })));
    }

    fn judged(serving: &[bool], candidate: &[bool], policy: &Policy) -> Verdict {
        let mut state = State::default();
        for &failed in serving {
            state.serving.push(failed, Duration::from_millis(10), policy.window);
        }
        for &failed in candidate {
            state.calls.push(failed, Duration::from_millis(10), policy.window);
            state.clean = if failed { 0 } else { state.clean + 1 };
        }
        state.judge(policy)
    }

    #[test]
    fn a_candidate_is_judged_only_after_min_calls_and_against_the_serving_rate() {
        let policy = Policy::default();
        let always = vec![true; policy.min_calls - 1];
        assert_eq!(judged(&[], &always, &policy), Verdict::Keep, "fewer than min_calls: no verdict yet");
        assert!(matches!(judged(&[], &vec![true; policy.min_calls], &policy), Verdict::RollBack(_)), "failing every call");
        let half: Vec<bool> = (0..policy.min_calls).map(|i| i % 2 == 0).collect();
        assert!(matches!(judged(&[false; 10], &half, &policy), Verdict::RollBack(r) if r.contains("failure rate 50%")));
        assert_eq!(judged(&half, &half, &policy), Verdict::Keep, "no worse than the serving guest");
    }

    #[test]
    fn a_slow_candidate_is_rolled_back_and_a_clean_one_promoted_when_asked() {
        let policy = Policy { promote_after: Some(20), ..Policy::default() };
        let mut state = State::default();
        for _ in 0..policy.min_calls {
            state.serving.push(false, Duration::from_millis(10), policy.window);
            state.calls.push(false, Duration::from_millis(25), policy.window);
        }
        assert!(matches!(state.judge(&policy), Verdict::RollBack(r) if r.contains("median latency 25 ms")));
        assert_eq!(judged(&[false; 10], &[false; 19], &policy), Verdict::Keep);
        assert_eq!(judged(&[false; 10], &[false; 20], &policy), Verdict::Promote);
    }
}
