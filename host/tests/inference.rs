//! How inference is sized and scheduled, end to end through `qa-host serve`:
//! - the threads, sessions and spinning the host chose are logged once at start, from the CPU
//!   share it may really use (a cgroup quota, the affinity mask, Lambda's memory size);
//! - a short request stays quick while long documents are answered beside it;
//! - a shadow candidate that hogs inference does not stretch what is served;
//! - the serving guest and a canary draw on one instance budget.

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What the host logs once at start.
const SIZED: &str = "inference sized to the CPU share";

/// The sample request through `host`, timed from send to the whole response.
fn timed(host: &Serving, body: &str) -> (u16, Value, Duration) {
    let started = Instant::now();
    let (status, reply) = host.post(body.to_string());
    (status, reply, started.elapsed())
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A context of about `bytes` bytes: paragraphs of the 200-question dev fixture in file order,
/// then the sample's paragraph (so the sample question has its answer at the end).
fn long_document(bytes: usize) -> String {
    let text = std::fs::read_to_string(workspace().join("fixtures/squad-dev-v1.1-random200.json")).unwrap();
    let squad: Value = serde_json::from_str(&text).unwrap();
    let mut paragraphs: Vec<String> = Vec::new();
    for article in squad["data"].as_array().unwrap() {
        for paragraph in article["paragraphs"].as_array().unwrap() {
            let context = paragraph["context"].as_str().unwrap().to_string();
            if !paragraphs.contains(&context) {
                paragraphs.push(context);
            }
        }
    }
    let benz = benz_request()["context"].as_str().unwrap().to_string();
    let mut chosen = Vec::new();
    let mut used = benz.len();
    for paragraph in paragraphs.into_iter().cycle() {
        if used + paragraph.len() + 2 > bytes {
            break;
        }
        used += paragraph.len() + 2;
        chosen.push(paragraph);
    }
    chosen.push(benz);
    chosen.join("\n\n")
}

/// A cgroup with a CPU quota, made for one test and removed when dropped (after the processes
/// in it ended). cgroup v1's `cpu` controller, or v2's root with `cpu` enabled for children.
struct CpuCgroup {
    dir: PathBuf,
}

impl CpuCgroup {
    /// A cgroup allowing `quota_us` of CPU every 100,000 µs. This needs a writable CPU
    /// controller (root, as the CI machine and the dev machine run the tests).
    fn new(name: &str, quota_us: u64) -> Self {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mount = |wanted: &dyn Fn(&str, &str) -> bool| {
            mounts.lines().find_map(|line| {
                let (before, after) = line.split_once(" - ")?;
                let mut after = after.split_whitespace();
                let (fstype, _, options) = (after.next()?, after.next()?, after.next().unwrap_or(""));
                wanted(fstype, options).then(|| PathBuf::from(before.split_whitespace().nth(4).unwrap()))
            })
        };
        let dir_name = format!("qa-test-{name}-{}", std::process::id());
        let created = if let Some(v1) = mount(&|fstype, options| fstype == "cgroup" && options.split(',').any(|o| o == "cpu")) {
            let dir = v1.join(&dir_name);
            std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(dir.join("cpu.cfs_period_us"), "100000"))
                .and_then(|()| std::fs::write(dir.join("cpu.cfs_quota_us"), quota_us.to_string()))
                .map(|()| dir)
        } else if let Some(v2) = mount(&|fstype, _| fstype == "cgroup2") {
            let dir = v2.join(&dir_name);
            std::fs::write(v2.join("cgroup.subtree_control"), "+cpu")
                .and_then(|()| std::fs::create_dir_all(&dir))
                .and_then(|()| std::fs::write(dir.join("cpu.max"), format!("{quota_us} 100000")))
                .map(|()| dir)
        } else {
            Err(std::io::Error::other("no cgroup v1 cpu controller or cgroup v2 mount in /proc/self/mountinfo"))
        };
        let dir = created.unwrap_or_else(|e| {
            panic!("this test runs the host under a CPU quota and needs a writable cgroup CPU controller (run as root): {e}")
        });
        Self { dir }
    }

    /// `command` started inside the cgroup: a shell moves itself in, then becomes the command,
    /// so the host reads its quota from its very first instruction.
    fn wrap(&self, command: &std::process::Command) -> std::process::Command {
        let mut wrapped = std::process::Command::new("sh");
        wrapped.arg("-c").arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#).arg(&self.dir).arg(command.get_program());
        wrapped.args(command.get_args());
        wrapped.env_clear();
        for (key, value) in command.get_envs() {
            if let Some(value) = value {
                wrapped.env(key, value);
            }
        }
        wrapped
    }
}

impl Drop for CpuCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// `qa-host serve` as [`Serving::start`] runs it, with `env`, as a command not yet started.
fn serve_command(guest: &Path, env: &[(&str, &str)]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_qa-host"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("ORT_DYLIB_PATH", onnxruntime())
        .env("QA_GUEST", guest)
        .env("QA_MODELS_DIR", models_dir())
        .env("QA_CACHE_DIR", workspace().join("target/qa-cache"))
        .env("QA_LOG", "info,qa_host=debug")
        .envs(env.iter().copied())
        .args(["serve", "--addr", "127.0.0.1:0"]);
    command
}

/// The real host in a cgroup with the CPU quota of a 512 MB Lambda function (0.29 of a CPU)
/// logs that share, read from the quota, and one thread that does not spin; with a quota of
/// two CPUs, two threads and two sessions. It answers under the quota.
#[test]
fn under_a_cgroup_cpu_quota_the_host_logs_the_share_and_sizes_inference_to_it() {
    for (quota_us, share, threads, sessions) in [(29_000, "cpu_share=0.29 ", 1, 1), (200_000, "cpu_share=2.0 ", 2, 2)] {
        let cgroup = CpuCgroup::new(&format!("quota-{quota_us}"), quota_us);
        let host = Serving::run(cgroup.wrap(&serve_command(&qa_guest(), &[])));
        let line = host.process.wait_for_log(SIZED, Duration::from_secs(10));
        assert!(line.contains(share) && line.contains(&format!("quota {quota_us} us per 100000 us")), "{line}");
        let expected = format!("threads={threads} sessions_per_model={sessions} spinning=false");
        assert!(line.contains(&expected), "expected {expected}: {line}");
        assert_eq!(host.process.count(SIZED), 1, "logged once");
        let (status, body) = host.post(benz_request().to_string());
        assert_eq!((status, &body["Answer"]), (200, &json!("1886")), "{body}");
        drop(host);
    }
}

/// Without a quota, the affinity mask bounds the share (`taskset`, no privileges needed); under
/// Lambda on demand, the function's memory does (512 MB: 0.29 of a vCPU, one thread).
#[test]
fn the_affinity_mask_and_lambda_s_memory_size_inference() {
    let mut pinned = std::process::Command::new("taskset");
    let command = serve_command(&qa_guest(), &[]);
    pinned.arg("-c").arg("0").arg(command.get_program()).args(command.get_args()).env_clear();
    pinned.envs(command.get_envs().filter_map(|(k, v)| Some((k, v?))));
    let host = Serving::run(pinned);
    let line = host.process.wait_for_log(SIZED, Duration::from_secs(10));
    assert!(line.contains("visible_cpus=1 threads=1 sessions_per_model=1"), "{line}");

    // Under Lambda (a Runtime API nobody answers: the host sizes inference at init, then
    // fails to reach the API, which is all this needs).
    let mut lambda = std::process::Command::new(env!("CARGO_BIN_EXE_qa-host"));
    lambda
        .env_clear()
        .env("ORT_DYLIB_PATH", onnxruntime())
        .env("QA_GUEST", qa_guest())
        .env("QA_MODELS_DIR", models_dir())
        .env("QA_CACHE_DIR", workspace().join("target/qa-cache"))
        .env("QA_LOG_FORMAT", "text")
        .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{}", free_port()))
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512");
    let process = Spawned::start(lambda);
    let line = process.wait_for_log(SIZED, Duration::from_secs(60));
    assert!(line.contains("cpu_share=0.289") && line.contains("Lambda memory 512 MB"), "{line}");
    assert!(line.contains("threads=1 sessions_per_model=1 spinning=false"), "{line}");
}

/// Long documents keep the sessions busy for seconds; the sample question asked meanwhile
/// takes the next free session ahead of their later batches, so it waits about one batch,
/// not for all of them. Its median while 8 long documents are answered stays within 6× its
/// median alone (measured as about 2-3× on the 2-core dev machine; first come, first served
/// on one session it was 10-40×, the fix's absence this test was checked against).
#[test]
fn a_short_request_stays_quick_while_long_documents_are_answered() {
    // The long documents share the CPU for a while on a loaded machine: no deadline in the way.
    let host = Serving::start(&qa_guest(), &[("QA_GUEST_DEADLINE_MS", "300000")]);
    let sample = benz_request().to_string();
    for _ in 0..3 {
        assert_eq!(timed(&host, &sample).0, 200);
    }
    let alone: Vec<Duration> = (0..15).map(|_| timed(&host, &sample).2).collect();

    const LONG: usize = 8;
    let document = json!({"question": "When was the car invented?", "context": long_document(20_000)}).to_string();
    let finished = Arc::new(AtomicUsize::new(0));
    let before = host.guest_calls();
    let longs: Vec<_> = (0..LONG)
        .map(|_| {
            let (base, document, finished) = (host.base.clone(), document.clone(), finished.clone());
            std::thread::spawn(move || {
                let response = http().post(&format!("{base}/")).header("Content-Type", "application/json").send(document).unwrap();
                let (status, body) = json_body(response);
                finished.fetch_add(1, Ordering::SeqCst);
                (status, body)
            })
        })
        .collect();
    host.wait_for_guest_calls(before, LONG);
    let mut during = Vec::new();
    while finished.load(Ordering::SeqCst) == 0 {
        let (status, body, took) = timed(&host, &sample);
        assert_eq!((status, &body["Answer"]), (200, &json!("1886")), "{body}");
        // Only a sample answered entirely while every long document was still running counts.
        if finished.load(Ordering::SeqCst) == 0 {
            during.push(took);
        }
    }
    let answered: Vec<(u16, Value)> = longs.into_iter().map(|t| t.join().unwrap()).collect();
    for (status, body) in &answered {
        assert_eq!(*status, 200, "{body}");
        assert!(body["windows"].as_u64().unwrap() > 20, "a long document: {}", body["windows"]);
    }
    assert!(during.len() >= 5, "only {} samples were answered while the long documents ran: make them longer", during.len());
    let (alone_p50, during_p50, during_p90) = (percentile(&alone, 0.5), percentile(&during, 0.5), percentile(&during, 0.9));
    eprintln!(
        "sample alone p50 {:.0} ms; with {LONG} long documents ({} samples) p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        ms(alone_p50),
        during.len(),
        ms(during_p50),
        ms(during_p90),
        ms(percentile(&during, 1.0))
    );
    assert!(
        during_p50 <= alone_p50 * 6,
        "the sample's median went from {:.0} ms alone to {:.0} ms beside long documents",
        ms(alone_p50),
        ms(during_p50)
    );
}

/// Two hosts side by side, asked in turn the same question: one alone, one with a shadow
/// candidate whose every call runs one 8×512 inference (the misbehaving guest's `nn:8x512`),
/// so its model's inference is hogged throughout. The shadow runs on its own lane (its own
/// session, the lowest priority, one run at a time) and what the second host serves stays as
/// quick as the first's: p50 within 1.5× (+25 ms), p99 within 2× (+100 ms). With the shadow
/// on the serving session (before the fix) the served answers waited for its runs: seconds.
#[test]
fn a_shadow_that_hogs_inference_does_not_stretch_served_latency() {
    let dir = tempfile::tempdir().unwrap();
    let candidate = dir.path().join("candidate.wasm");
    std::fs::copy(misbehaving_guest(), &candidate).unwrap();
    let alone = Serving::start(&qa_guest(), &[] as &[(&str, &str)]);
    let shadowed = Serving::start(
        &qa_guest(),
        &[
            ("QA_GUEST_SHADOW", candidate.display().to_string()),
            // The hog is slower than the serving guest by far: keep it from being rolled back.
            ("QA_ROLLOUT_MIN_CALLS", "100000".into()),
        ],
    );
    let body = json!({"question": "nn:8x512", "context": benz_request()["context"]}).to_string();
    for host in [&alone, &shadowed] {
        for _ in 0..3 {
            assert_eq!(timed(host, &body).0, 200);
        }
    }
    let hogs = || shadowed.process.count(SHADOW_RAN);
    let hogs_before = hogs();
    let measuring = Instant::now();
    // The lane was busy for most of the measurement: the runs that ended during it (each
    // logs how long it ran; a run cut by the shadow's deadline still hogged until then).
    let busy = || -> u64 {
        shadowed.process.lines()[..]
            .iter()
            .filter(|l| l.contains(SHADOW_RAN))
            .skip(hogs_before)
            .map(|l| l.split("ms=").nth(1).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
            .sum()
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    // Until at least 30 samples each, shadow runs ended during the measurement, and they kept
    // the lane busy for half of it (a run that started late on a loaded machine left it at 49 %
    // once, 2026-12-08: measuring on until it holds, rather than failing, keeps the claim's
    // condition without depending on when the first run began).
    let (measured, busy) = loop {
        let (elapsed, busy) = (measuring.elapsed(), busy());
        if a.len() >= 30 && hogs() >= hogs_before + 2 && Duration::from_millis(busy) * 2 >= elapsed {
            break (elapsed, busy);
        }
        assert!(a.len() < 2000, "the shadow's inference never ran for half the measurement");
        let (status, reply, took) = timed(&alone, &body);
        assert_eq!(status, 200, "{reply}");
        a.push(took);
        let (status, reply, took) = timed(&shadowed, &body);
        assert_eq!(status, 200, "{reply}");
        b.push(took);
    };
    eprintln!("the shadow lane ran {busy} ms of inference during {:.0} ms of measurement", ms(measured));
    let (a50, a99, b50, b99) = (percentile(&a, 0.5), percentile(&a, 0.99), percentile(&b, 0.5), percentile(&b, 0.99));
    eprintln!(
        "{} requests each: alone p50 {:.0} ms p99 {:.0} ms; beside a hogging shadow p50 {:.0} ms p99 {:.0} ms",
        a.len(),
        ms(a50),
        ms(a99),
        ms(b50),
        ms(b99)
    );
    assert!(b50 <= a50.mul_f64(1.5) + Duration::from_millis(25), "p50 {:.0} ms beside the shadow, {:.0} ms alone", ms(b50), ms(a50));
    assert!(b99 <= a99 * 2 + Duration::from_millis(100), "p99 {:.0} ms beside the shadow, {:.0} ms alone", ms(b99), ms(a99));
}

/// What the host logs (at debug) after each run on a model's shadow lane.
const SHADOW_RAN: &str = "shadow inference ran";

/// `QA_GUEST_INSTANCES=2` with a canary taking half the requests: the serving guest and the
/// canary have an engine each, but 12 requests that each hold their instance for 10 s get 2
/// answers and 10 `overloaded` refusals, not 2 per guest.
#[test]
fn with_two_instances_and_a_canary_no_more_than_two_requests_run_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let candidate = dir.path().join("candidate.wasm");
    std::fs::copy(misbehaving_guest(), &candidate).unwrap();
    let host = Serving::start(
        &misbehaving_guest(),
        &[
            ("QA_GUEST_INSTANCES", "2".to_string()),
            ("QA_GUEST_CANARY", candidate.display().to_string()),
            ("QA_GUEST_CANARY_PERCENT", "50".into()),
        ],
    );
    let started = Instant::now();
    let requests: Vec<_> = (0..12)
        .map(|_| {
            let base = host.base.clone();
            std::thread::spawn(move || {
                let body = json!({"question": "remember-for:10:x", "context": "some context"}).to_string();
                let sent = started.elapsed();
                let response = http().post(&format!("{base}/")).header("Content-Type", "application/json").send(body).unwrap();
                (sent, json_body(response))
            })
        })
        .collect();
    let outcomes: Vec<(Duration, (u16, Value))> = requests.into_iter().map(|t| t.join().unwrap()).collect();
    let last_sent = outcomes.iter().map(|(sent, _)| *sent).max().unwrap();
    assert!(last_sent < Duration::from_secs(9), "all requests must arrive while the first ones run (last sent at {last_sent:?})");
    let answered = outcomes.iter().filter(|(_, (status, _))| *status == 200).count();
    let refused = outcomes.iter().filter(|(_, (status, body))| *status == 503 && body["error"]["code"] == "overloaded").count();
    assert_eq!((answered, refused), (2, 10), "{outcomes:?}");
}
