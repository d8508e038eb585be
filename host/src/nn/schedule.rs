//! Who runs inference next on a model.
//!
//! - **Serving calls share a pool of sessions, least served first, aged.** A guest runs a long
//!   document's windows a few at a time (one `compute` per batch), giving its session back
//!   between batches. A waiting run's place is when it began waiting plus the inference its
//!   call has had so far: among runs that begin waiting together, the call that had less
//!   goes first (least attained service), so a short request queued behind long documents
//!   waits for one batch, not for their whole documents; and a call that has waited as long
//!   as it has run goes before any newer one, so a stream of newer calls cannot starve it
//!   (pure least-attained-service did: under four concurrent 20 KB documents a call that had
//!   had the most inference waited past its 30 s deadline while newer ones kept arriving).
//! - **Shadow calls run on a lane of their own**: at most one run at a time per model, on the
//!   lane's own session and a thread of the lowest scheduling priority, and none while serving
//!   calls wait for a session (the run is shed: refused, and the call marked so that the
//!   rollout does not hold it against the candidate).

use super::RunControl;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Whose inference a guest call runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// An answer a client waits for (the serving guest, or a canary).
    Serving,
    /// A shadow call: compared, never returned; it must not slow what is served.
    Shadow,
}

/// One guest call's standing in inference scheduling, shared by whoever made the call and the
/// model handle its guest holds.
#[derive(Debug)]
pub struct Call {
    priority: Priority,
    /// Inference time this call has had, in microseconds.
    served_us: AtomicU64,
    shed: AtomicBool,
    /// Set while a run of this call waits for the shadow lane: queued behind another run, or
    /// behind the lane's session being built at the lowest priority.
    lane_waiting: AtomicBool,
}

impl Call {
    pub fn new(priority: Priority) -> Arc<Self> {
        Arc::new(Self { priority, served_us: AtomicU64::new(0), shed: AtomicBool::new(false), lane_waiting: AtomicBool::new(false) })
    }

    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// Whether a run of this call was refused to make room for serving calls.
    pub fn was_shed(&self) -> bool {
        self.shed.load(Ordering::Acquire)
    }

    /// Whether a run of this call is waiting for the shadow lane now. A deadline that passes
    /// while it waits measures how busy the host is (the lane yields to every other thread),
    /// not the candidate.
    pub fn waits_for_lane(&self) -> bool {
        self.lane_waiting.load(Ordering::Acquire)
    }

    pub(super) fn mark_shed(&self) {
        self.shed.store(true, Ordering::Release);
    }

    pub(super) fn served_us(&self) -> u64 {
        self.served_us.load(Ordering::Acquire)
    }

    pub(super) fn add(&self, took: Duration) {
        self.served_us.fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Ordering::AcqRel);
    }
}

/// How often a waiting run looks whether its request ended (its deadline passed, its client
/// left): it then leaves the queue instead of taking a turn it no longer needs.
const RECHECK: Duration = Duration::from_millis(50);

/// Builds one more session of a pool.
pub type Build<S> = Arc<dyn Fn() -> Result<S, String> + Send + Sync>;

/// A model's serving sessions: taken by the waiting run whose wait began earliest once the
/// inference its call already had is added (the module's "least served first, aged"), given
/// back when its run ends. The pool starts with the sessions it is given and grows to
/// `limit` only when runs find none idle: a process that never runs two at once (one-shot
/// commands, Lambda on demand) builds one, and start-up waits for one. Once it has them all,
/// the last idle session is kept for a call's first run: calls that already had inference
/// (long documents' later batches) share the others, and a short request finds one free at
/// once instead of waiting for a batch to end. (The shared thread pool still gives one run
/// alone every thread.)
pub struct Pool<S> {
    state: Mutex<PoolState<S>>,
    turn: Condvar,
    waiting: AtomicUsize,
    limit: usize,
    build: Option<Build<S>>,
    /// The clock of the queue's places.
    began: Instant,
}

struct PoolState<S> {
    idle: Vec<S>,
    /// Sessions built (idle or running).
    built: usize,
    /// A session is being built.
    building: bool,
    /// Building one failed: the pool keeps the sessions it has.
    stopped: bool,
    /// Waiting runs by (µs since the pool began at which the run began waiting, plus the
    /// inference its call had in µs; arrival): the first takes the next turn.
    queue: BTreeSet<(u64, u64)>,
    arrivals: u64,
}

impl<S: Send + 'static> Pool<S> {
    /// A pool of `sessions`, fixed.
    pub fn new(sessions: Vec<S>) -> Self {
        let limit = sessions.len();
        Self::growing(sessions, limit, None)
    }

    /// A pool of `sessions` that `build` grows to `limit` when runs find none idle.
    pub fn growing(sessions: Vec<S>, limit: usize, build: Option<Build<S>>) -> Self {
        let built = sessions.len();
        let state = PoolState { idle: sessions, built, building: false, stopped: false, queue: BTreeSet::new(), arrivals: 0 };
        Self {
            state: Mutex::new(state),
            turn: Condvar::new(),
            waiting: AtomicUsize::new(0),
            limit: limit.max(built),
            build,
            began: Instant::now(),
        }
    }

    /// Runs waiting for a session now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// A session for one run of a call that has had `served_us` of inference (0: its first
    /// run), once it is that run's turn (blocking: runs are on blocking threads). Fails when
    /// `run` is terminated while it waits.
    pub fn take(self: &Arc<Self>, served_us: u64, run: &RunControl) -> Result<Lease<S>, String> {
        let mut state = self.state.lock().map_err(poisoned)?;
        let now_us = u64::try_from(self.began.elapsed().as_micros()).unwrap_or(u64::MAX);
        let ticket = (now_us.saturating_add(served_us), state.arrivals);
        state.arrivals += 1;
        state.queue.insert(ticket);
        self.waiting.store(state.queue.len(), Ordering::Release);
        loop {
            if state.queue.first() == Some(&ticket) {
                let kept = usize::from(served_us > 0 && self.limit >= 2 && state.built >= self.limit);
                if state.idle.len() > kept
                    && let Some(session) = state.idle.pop()
                {
                    state.queue.remove(&ticket);
                    self.waiting.store(state.queue.len(), Ordering::Release);
                    // Another session may be idle for the next in line.
                    if !state.idle.is_empty() && !state.queue.is_empty() {
                        self.turn.notify_all();
                    }
                    return Ok(Lease { pool: self.clone(), session: Some(session) });
                }
                if !state.building && !state.stopped && state.built < self.limit {
                    self.grow(&mut state);
                }
            }
            if run.is_terminated() {
                state.queue.remove(&ticket);
                self.waiting.store(state.queue.len(), Ordering::Release);
                self.turn.notify_all();
                return Err("the request ended while its inference waited for a session".into());
            }
            state = self.turn.wait_timeout(state, RECHECK).map_err(poisoned)?.0;
        }
    }

    /// Builds one more session on a thread of its own; the runs waiting meanwhile take
    /// whichever session comes free first.
    fn grow(self: &Arc<Self>, state: &mut PoolState<S>) {
        let Some(build) = self.build.clone() else {
            state.stopped = true;
            return;
        };
        state.building = true;
        let pool = self.clone();
        let spawned = std::thread::Builder::new().name("qa-session-build".into()).spawn(move || {
            let built = build();
            let Ok(mut state) = pool.state.lock() else { return };
            state.building = false;
            match built {
                Ok(session) => {
                    state.idle.push(session);
                    state.built += 1;
                }
                Err(error) => {
                    tracing::warn!(%error, "building another inference session failed; the model keeps its sessions");
                    state.stopped = true;
                }
            }
            pool.turn.notify_all();
        });
        if spawned.is_err() {
            (state.building, state.stopped) = (false, true);
        }
    }
}

fn poisoned<T>(_: T) -> String {
    "the model's sessions were poisoned by an earlier failure".to_string()
}

/// A session taken for one run: given back to its pool when dropped, even by a panic.
pub struct Lease<S> {
    pool: Arc<Pool<S>>,
    session: Option<S>,
}

impl<S> Lease<S> {
    pub fn session(&mut self) -> Result<&mut S, String> {
        self.session.as_mut().ok_or_else(|| "no session taken".to_string())
    }
}

impl<S> Drop for Lease<S> {
    fn drop(&mut self) {
        if let (Some(session), Ok(mut state)) = (self.session.take(), self.pool.state.lock()) {
            state.idle.push(session);
            self.pool.turn.notify_all();
        }
    }
}

type Job<S> = Box<dyn FnOnce(Result<&mut S, String>) + Send>;

/// Runs jobs one at a time on a thread of its own at the lowest scheduling priority (nice 19),
/// which owns an `S` built on the first job: the shadow lane of one model. The thread ends
/// when the lane is dropped.
pub struct Lane<S> {
    jobs: Mutex<Option<mpsc::Sender<Job<S>>>>,
    build: Arc<dyn Fn() -> Result<S, String> + Send + Sync>,
    name: String,
}

impl<S: 'static> Lane<S> {
    pub fn new(name: impl Into<String>, build: impl Fn() -> Result<S, String> + Send + Sync + 'static) -> Self {
        Self { jobs: Mutex::new(None), build: Arc::new(build), name: name.into() }
    }

    /// Runs `job` for `call` on the lane after the jobs before it; blocks until it has run.
    /// Until the job starts, `call` [waits for the lane](Call::waits_for_lane).
    pub fn run<R: Send + 'static>(
        &self,
        call: &Arc<Call>,
        job: impl FnOnce(&mut S) -> Result<R, String> + Send + 'static,
    ) -> Result<R, String> {
        let (reply, answer) = mpsc::sync_channel(1);
        let started = call.clone();
        let job: Job<S> = Box::new(move |state| {
            started.lane_waiting.store(false, Ordering::Release);
            let _ = reply.send(state.and_then(job));
        });
        call.lane_waiting.store(true, Ordering::Release);
        let result = self
            .sender()
            .and_then(|jobs| jobs.send(job).map_err(|_| format!("{} stopped", self.name)))
            .and_then(|()| answer.recv().map_err(|_| format!("{} stopped during the run", self.name))?);
        call.lane_waiting.store(false, Ordering::Release);
        result
    }

    fn sender(&self) -> Result<mpsc::Sender<Job<S>>, String> {
        let mut jobs = self.jobs.lock().map_err(|_| format!("{} poisoned", self.name))?;
        if let Some(sender) = jobs.as_ref() {
            return Ok(sender.clone());
        }
        let (sender, receiver) = mpsc::channel::<Job<S>>();
        let build = self.build.clone();
        std::thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || {
                lowest_priority();
                let mut state: Option<S> = None;
                for job in receiver {
                    if state.is_none() {
                        match build() {
                            Ok(built) => state = Some(built),
                            Err(error) => {
                                job(Err(error));
                                continue;
                            }
                        }
                    }
                    match state.as_mut() {
                        Some(state) => job(Ok(state)),
                        None => job(Err("not built".into())),
                    }
                }
            })
            .map_err(|e| format!("starting {}: {e}", self.name))?;
        *jobs = Some(sender.clone());
        Ok(sender)
    }
}

/// Makes the calling thread yield the CPU to every normal thread of the host (nice 19: about
/// 1.5% of a CPU against one busy normal thread). A process may always lower its own priority.
fn lowest_priority() {
    let thread = rustix::thread::gettid();
    if let Err(error) = rustix::process::setpriority_process(Some(thread), 19) {
        tracing::warn!(%error, "could not lower the shadow lane's priority; shadow inference runs at normal priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run's control without ONNX Runtime's options (these tests load no library).
    fn control() -> RunControl {
        RunControl { options: None, terminated: Arc::new(AtomicBool::new(false)) }
    }

    /// Waits (polling, since the pool offers no event for it) until `n` runs wait.
    fn until_waiting<S: Send + 'static>(pool: &Pool<S>, n: usize) {
        let started = Instant::now();
        while pool.waiting() != n {
            assert!(started.elapsed() < Duration::from_secs(30), "{} of {n} runs waiting", pool.waiting());
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// One session, held; three runs queue: two of calls that already had much inference (a
    /// long document's later batches), then one of a fresh call (a short request). Given
    /// back, the session goes to the fresh call first, then to the others in order of what
    /// they had, whatever their arrival.
    #[test]
    fn a_waiting_call_that_had_less_inference_runs_first() {
        let pool = Arc::new(Pool::new(vec![0u32]));
        let run = control();
        let held = pool.take(0, &run).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for (i, served_us) in [(0, 900_000u64), (1, 300_000), (2, 0)] {
            let (shared, order, run) = (pool.clone(), order.clone(), run.clone());
            threads.push(std::thread::spawn(move || {
                let lease = shared.take(served_us, &run).unwrap();
                order.lock().unwrap().push(i);
                drop(lease);
            }));
            until_waiting(&pool, i + 1);
        }
        drop(held);
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(*order.lock().unwrap(), [2, 1, 0]);
    }

    /// A call that has waited longer than the inference it had goes before a fresh call: the
    /// call with the most inference is not starved by a stream of newer ones.
    #[test]
    fn a_call_that_waited_as_long_as_it_ran_goes_before_newer_calls() {
        let pool = Arc::new(Pool::new(vec![0u32]));
        let run = control();
        let held = pool.take(0, &run).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let waiter = |name: &'static str, served_us: u64| {
            let (pool, order, run) = (pool.clone(), order.clone(), run.clone());
            std::thread::spawn(move || {
                let lease = pool.take(served_us, &run).unwrap();
                order.lock().unwrap().push(name);
                drop(lease);
            })
        };
        let long = waiter("had 50 ms", 50_000);
        until_waiting(&pool, 1);
        std::thread::sleep(Duration::from_millis(120));
        let fresh = waiter("fresh", 0);
        until_waiting(&pool, 2);
        drop(held);
        long.join().unwrap();
        fresh.join().unwrap();
        assert_eq!(*order.lock().unwrap(), ["had 50 ms", "fresh"]);
    }

    /// Two sessions: two runs take them at once; a third waits until one is given back.
    #[test]
    fn runs_beyond_the_sessions_wait_and_a_terminated_one_leaves_the_queue() {
        let pool = Arc::new(Pool::new(vec![0u32, 1]));
        let run = control();
        let (a, b) = (pool.take(0, &run).unwrap(), pool.take(0, &run).unwrap());
        assert_eq!(pool.waiting(), 0);
        let ended = control();
        let waiter = {
            let (pool, ended) = (pool.clone(), ended.clone());
            std::thread::spawn(move || pool.take(0, &ended).map(drop))
        };
        until_waiting(&pool, 1);
        ended.terminate();
        assert!(waiter.join().unwrap().unwrap_err().contains("ended"));
        assert_eq!(pool.waiting(), 0);
        drop((a, b));
        assert!(pool.take(0, &run).is_ok());
    }

    /// With all its sessions, the pool keeps the last idle one for a call's first run: a call
    /// that already had inference waits for another, a fresh call takes it at once.
    #[test]
    fn the_last_idle_session_is_kept_for_a_call_s_first_run() {
        let pool = Arc::new(Pool::new(vec![0u32, 1]));
        let run = control();
        let long = pool.take(40_000, &run).unwrap();
        let later = {
            let (pool, run) = (pool.clone(), run.clone());
            std::thread::spawn(move || pool.take(80_000, &run).map(drop))
        };
        until_waiting(&pool, 1);
        let short = pool.take(0, &run).expect("a first run takes the kept session");
        assert_eq!(pool.waiting(), 1, "the later batch still waits");
        drop(short);
        assert_eq!(pool.waiting(), 1, "one idle session: kept again");
        drop(long);
        later.join().unwrap().unwrap();
    }

    /// A pool that may grow builds a session only when a run finds none idle, and that run (or
    /// the next in line) gets it.
    #[test]
    fn a_growing_pool_builds_a_session_only_when_runs_find_none_idle() {
        let built = Arc::new(AtomicUsize::new(0));
        let counter = built.clone();
        let build: Build<u32> = Arc::new(move || Ok(10 + counter.fetch_add(1, Ordering::SeqCst) as u32));
        let pool = Arc::new(Pool::growing(vec![0u32], 3, Some(build)));
        let run = control();
        for _ in 0..3 {
            let mut lease = pool.take(0, &run).unwrap();
            assert_eq!(*lease.session().unwrap(), 0, "sequential runs reuse the first session");
        }
        assert_eq!(built.load(Ordering::SeqCst), 0);
        let mut first = pool.take(0, &run).unwrap();
        let mut second = pool.take(0, &run).unwrap();
        assert_eq!((*first.session().unwrap(), *second.session().unwrap()), (0, 10), "the second run got a new session");
        let mut third = pool.take(0, &run).unwrap();
        assert_eq!(*third.session().unwrap(), 11);
        assert_eq!(built.load(Ordering::SeqCst), 2, "three at once: two built, the limit");
        drop((first, second, third));
    }

    /// The lane runs jobs one at a time on its own thread, built once, at nice 19.
    #[test]
    fn the_lane_runs_one_job_at_a_time_on_a_low_priority_thread() {
        let builds = Arc::new(AtomicUsize::new(0));
        let counted = builds.clone();
        let lane = Arc::new(Lane::new("test-lane", move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(0u32)
        }));
        let running = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (lane, running) = (lane.clone(), running.clone());
                std::thread::spawn(move || {
                    lane.run(&Call::new(Priority::Shadow), move |state: &mut u32| {
                        assert_eq!(running.fetch_add(1, Ordering::SeqCst), 0, "one job at a time");
                        *state += 1;
                        let nice = rustix::process::getpriority_process(None).unwrap_or(0);
                        std::thread::sleep(Duration::from_millis(5));
                        running.fetch_sub(1, Ordering::SeqCst);
                        Ok((*state, nice))
                    })
                    .unwrap()
                })
            })
            .collect();
        let mut results: Vec<(u32, i32)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        results.sort();
        assert_eq!(results.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3, 4], "one state, kept between jobs");
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        assert!(results.iter().all(|r| r.1 == 19), "nice 19: {results:?}");
    }

    /// A call queued behind another run of the lane waits for the lane until its own job
    /// starts, and no longer once it has.
    #[test]
    fn a_call_waits_for_the_lane_until_its_job_starts() {
        let lane = Arc::new(Lane::new("test-lane", || Ok(())));
        let (release, hold) = mpsc::channel::<()>();
        let (first_started, first_running) = mpsc::channel::<()>();
        let busy = {
            let lane = lane.clone();
            std::thread::spawn(move || {
                lane.run(&Call::new(Priority::Shadow), move |_| {
                    first_started.send(()).map_err(|e| e.to_string())?;
                    hold.recv().map_err(|e| e.to_string())
                })
            })
        };
        first_running.recv().unwrap();
        let queued = Call::new(Priority::Shadow);
        let (saw, seen) = mpsc::channel::<bool>();
        let second = {
            let (lane, call) = (lane.clone(), queued.clone());
            std::thread::spawn(move || {
                let inside = call.clone();
                lane.run(&call, move |_| saw.send(inside.waits_for_lane()).map_err(|e| e.to_string()))
            })
        };
        let started = std::time::Instant::now();
        while !queued.waits_for_lane() {
            assert!(started.elapsed() < Duration::from_secs(30), "the second call never queued");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(queued.waits_for_lane(), "still queued behind the first run");
        release.send(()).unwrap();
        busy.join().unwrap().unwrap();
        second.join().unwrap().unwrap();
        assert!(!seen.recv().unwrap(), "its job ran, so it no longer waited");
        assert!(!queued.waits_for_lane());
    }
}
