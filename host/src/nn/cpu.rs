//! How much CPU this process may really use, and the inference threads that follow from it.
//!
//! A process can see more cores than it may use: Lambda gives a function CPU in proportion to
//! its memory (one vCPU at 1,769 MB), enforced outside the microVM, while the process sees 2
//! cores; a container's CFS quota (cgroup v1 `cpu.cfs_quota_us`, v2 `cpu.max`) or affinity mask
//! likewise. ONNX Runtime's default (one thread per visible core, spinning between runs) then
//! burns the quota on threads that wait for each other. [`CpuShare::probe`] finds the share,
//! [`InferencePlan::for_share`] turns it into threads, sessions and spinning; the settings that
//! override them are read once, with the rest of the configuration.

use std::path::{Path, PathBuf};

/// Memory at which Lambda gives a function one whole vCPU; below and above it, the share is
/// proportional (the AWS Lambda developer guide, "Configuring function memory").
pub const LAMBDA_MB_PER_VCPU: f64 = 1769.0;

/// Where a CPU share was read from (for the start-up log line).
#[derive(Clone, Debug, PartialEq)]
pub enum ShareSource {
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, under Lambda on demand.
    LambdaMemory { memory_mb: u64 },
    /// A CFS quota of the process's cgroup (the smallest along its path to the root).
    Quota { version: CgroupVersion, quota_us: u64, period_us: u64 },
    /// The CPUs the process may run on (`sched_getaffinity`): nothing narrower was found.
    Affinity,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// A CFS bandwidth limit: `quota_us` of CPU time every `period_us`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub quota_us: u64,
    pub period_us: u64,
}

impl Quota {
    /// CPUs' worth of time per period (0.29 for 29,000 µs every 100,000 µs).
    pub fn cpus(self) -> f64 {
        self.quota_us as f64 / self.period_us.max(1) as f64
    }
}

/// The CPU the process may use: `cpus` in CPUs' worth of time (fractional), never more than
/// the `visible` CPUs it may run on.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuShare {
    pub cpus: f64,
    pub visible: usize,
    pub source: ShareSource,
}

impl CpuShare {
    /// The share from what is known: under Lambda on demand (`lambda_memory_mb`) the memory's
    /// share of a vCPU; elsewhere the cgroup quota; never more than the `visible` CPUs.
    pub fn from_parts(lambda_memory_mb: Option<u64>, quota: Option<(CgroupVersion, Quota)>, visible: usize) -> Self {
        let visible = visible.max(1);
        let (cpus, source) = match (lambda_memory_mb, quota) {
            (Some(memory_mb), _) => (memory_mb as f64 / LAMBDA_MB_PER_VCPU, ShareSource::LambdaMemory { memory_mb }),
            (None, Some((version, quota))) => {
                (quota.cpus(), ShareSource::Quota { version, quota_us: quota.quota_us, period_us: quota.period_us })
            }
            (None, None) => (visible as f64, ShareSource::Affinity),
        };
        Self { cpus: cpus.min(visible as f64).max(0.01), visible, source }
    }

    /// This process's share: `lambda_memory_mb` when Lambda sizes the CPU by memory, else the
    /// cgroup quota (v2, then v1) of the process, bounded by its affinity mask.
    pub fn probe(lambda_memory_mb: Option<u64>) -> Self {
        let visible = affinity().unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        let quota = if lambda_memory_mb.is_some() { None } else { read_quota(Path::new("/")) };
        Self::from_parts(lambda_memory_mb, quota, visible)
    }

    /// What the log line says the share came from.
    pub fn describe(&self) -> String {
        match &self.source {
            ShareSource::LambdaMemory { memory_mb } => format!("Lambda memory {memory_mb} MB / {LAMBDA_MB_PER_VCPU} MB per vCPU"),
            ShareSource::Quota { version, quota_us, period_us } => {
                format!("cgroup {} quota {quota_us} us per {period_us} us", if *version == CgroupVersion::V1 { "v1" } else { "v2" })
            }
            ShareSource::Affinity => "affinity mask (no quota)".into(),
        }
    }
}

/// What inference runs with, derived from a [`CpuShare`]: each setting may be overridden.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InferencePlan {
    /// ONNX Runtime intra-op threads of the shared pool (0: ONNX Runtime's choice).
    pub threads: usize,
    /// Sessions per model: inference runs on one model at once.
    pub sessions: usize,
    /// Whether idle pool threads spin before they sleep.
    pub spinning: bool,
}

impl InferencePlan {
    /// The defaults for `share`, with `max_concurrency` requests at most at once (`None`:
    /// unbounded, as under `serve`):
    /// - threads: the share rounded up (one at 0.29 of a vCPU, 2 at 1.7), at most the visible
    ///   CPUs; one run alone uses all of it;
    /// - sessions: the whole CPUs of the share (at least one, at most `max_concurrency`), so
    ///   concurrent requests run side by side instead of queueing;
    /// - spinning only when every thread that can be busy at once (the pool's threads, and
    ///   one caller per further session) has a whole CPU of its own: a thread that spins on a
    ///   fraction of a CPU burns the quota its siblings wait for.
    pub fn for_share(share: &CpuShare, max_concurrency: Option<u32>) -> Self {
        let threads = (share.cpus.ceil() as usize).clamp(1, share.visible.max(1));
        let whole = (share.cpus.floor() as usize).max(1);
        let sessions = max_concurrency.map_or(whole, |n| whole.min(n.max(1) as usize));
        Self { threads, sessions, spinning: Self::may_spin(share, threads, sessions) }
    }

    /// Whether `threads` pool threads and `sessions` sessions may spin within `share`.
    pub fn may_spin(share: &CpuShare, threads: usize, sessions: usize) -> bool {
        let busy = threads.max(1) + sessions.max(1) - 1;
        share.cpus + 1e-9 >= busy as f64
    }
}

/// The CPUs this process may run on (`sched_getaffinity`).
fn affinity() -> Option<usize> {
    rustix::thread::sched_getaffinity(None).ok().map(|set| set.count() as usize).filter(|&n| n > 0)
}

/// The tightest CFS quota over the process's cgroup and its ancestors, cgroup v2 first, reading
/// the files under `root` (`/` on a real system; a test's directory in unit tests).
pub fn read_quota(root: &Path) -> Option<(CgroupVersion, Quota)> {
    let read = |path: &str| std::fs::read_to_string(root.join(path.trim_start_matches('/'))).ok();
    let (cgroups, mounts) = (read("/proc/self/cgroup")?, read("/proc/self/mountinfo")?);
    let mut found: Option<(CgroupVersion, Quota)> = None;
    for (version, dir, top) in cgroup_dirs(&cgroups, &mounts) {
        let (dir, top) = (root.join(dir.strip_prefix("/").unwrap_or(&dir)), root.join(top.strip_prefix("/").unwrap_or(&top)));
        // A parent's limit bounds its children: the smallest share along the path counts.
        for level in dir.ancestors().take_while(|d| d.starts_with(&top)) {
            let quota = match version {
                CgroupVersion::V2 => std::fs::read_to_string(level.join("cpu.max")).ok().and_then(|t| parse_cpu_max(&t)),
                CgroupVersion::V1 => {
                    let quota = std::fs::read_to_string(level.join("cpu.cfs_quota_us")).ok();
                    let period = std::fs::read_to_string(level.join("cpu.cfs_period_us")).ok();
                    quota.zip(period).and_then(|(q, p)| parse_cfs(&q, &p))
                }
            };
            if let Some(quota) = quota
                && found.is_none_or(|(_, f)| quota.cpus() < f.cpus())
            {
                found = Some((version, quota));
            }
        }
    }
    found
}

/// cgroup v2 `cpu.max`: `"<quota> <period>"`, or `"max <period>"` (no limit: `None`).
pub fn parse_cpu_max(text: &str) -> Option<Quota> {
    let mut fields = text.split_whitespace();
    let quota = fields.next()?.parse::<u64>().ok()?;
    let period = fields.next().map_or(Some(100_000), |p| p.parse::<u64>().ok())?;
    (quota > 0 && period > 0).then_some(Quota { quota_us: quota, period_us: period })
}

/// cgroup v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us` (a quota of -1: no limit, `None`).
pub fn parse_cfs(quota: &str, period: &str) -> Option<Quota> {
    let quota = quota.trim().parse::<i64>().ok().filter(|&q| q > 0)?;
    let period = period.trim().parse::<u64>().ok().filter(|&p| p > 0)?;
    Some(Quota { quota_us: quota as u64, period_us: period })
}

/// The directories holding this process's CPU controller files, with the mount point above
/// which no limit is visible: from `/proc/self/cgroup` (`id:controllers:path`) and
/// `/proc/self/mountinfo` (a cgroup v2 mount, or the v1 mount carrying the `cpu` controller).
/// A mount whose root is the process's own cgroup (a container's namespace) maps that path to
/// the mount point.
pub fn cgroup_dirs(proc_cgroup: &str, mountinfo: &str) -> Vec<(CgroupVersion, PathBuf, PathBuf)> {
    let mut dirs = Vec::new();
    for line in proc_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else { continue };
        let version = if id == "0" && controllers.is_empty() {
            CgroupVersion::V2
        } else if controllers.split(',').any(|c| c == "cpu") {
            CgroupVersion::V1
        } else {
            continue;
        };
        let Some((root, mount)) = mountinfo.lines().find_map(|m| cgroup_mount(m, version)) else { continue };
        let relative = Path::new(path).strip_prefix(&root).ok().or_else(|| Path::new(path).strip_prefix("/").ok());
        let Some(relative) = relative else { continue };
        dirs.push((version, mount.join(relative), mount));
    }
    dirs
}

/// The root and mount point of one mountinfo line, when it mounts `version`'s CPU controller.
fn cgroup_mount(line: &str, version: CgroupVersion) -> Option<(PathBuf, PathBuf)> {
    let (before, after) = line.split_once(" - ")?;
    let fields: Vec<&str> = before.split_whitespace().collect();
    let mut after = after.split_whitespace();
    let (fstype, _source, options) = (after.next()?, after.next()?, after.next().unwrap_or(""));
    let wanted = match version {
        CgroupVersion::V2 => fstype == "cgroup2",
        CgroupVersion::V1 => fstype == "cgroup" && options.split(',').any(|o| o == "cpu"),
    };
    if !wanted {
        return None;
    }
    Some((PathBuf::from(unescape(fields.get(3)?)), PathBuf::from(unescape(fields.get(4)?))))
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as octal (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = field.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(cpus_of: Option<u64>, quota: Option<Quota>, visible: usize) -> CpuShare {
        CpuShare::from_parts(cpus_of, quota.map(|q| (CgroupVersion::V2, q)), visible)
    }

    /// Lambda's table: 512, 1,024, 1,769, 3,008 and 10,240 MB on a machine that shows 2 or 6
    /// cores: one thread up to a whole vCPU, spinning only where each thread has a whole one,
    /// and as many sessions as whole vCPUs when several invocations arrive at once.
    #[test]
    fn lambda_memory_sizes_the_share_threads_and_spinning() {
        let cases = [
            // memory, visible, share, threads, spinning, sessions with 16 invocations at once
            (512, 2, 0.289, 1, false, 1),
            (1024, 2, 0.579, 1, false, 1),
            (1769, 2, 1.0, 1, true, 1),
            (3008, 2, 1.700, 2, false, 1),
            (10240, 6, 5.789, 6, false, 5),
        ];
        for (memory_mb, visible, cpus, threads, spinning, sessions) in cases {
            let share = share(Some(memory_mb), None, visible);
            assert!((share.cpus - cpus).abs() < 0.001, "{memory_mb} MB: {}", share.cpus);
            assert_eq!(share.source, ShareSource::LambdaMemory { memory_mb });
            let alone = InferencePlan::for_share(&share, Some(1));
            assert_eq!(alone, InferencePlan { threads, sessions: 1, spinning }, "{memory_mb} MB, one invocation at a time");
            assert_eq!(InferencePlan::for_share(&share, Some(16)).sessions, sessions, "{memory_mb} MB, 16 invocations at once");
        }
        assert_eq!(share(Some(20_000), None, 2).cpus, 2.0, "never more than the visible CPUs");
    }

    #[test]
    fn a_cgroup_quota_sizes_the_share_and_the_affinity_mask_caps_it() {
        let quarter = Quota { quota_us: 29_000, period_us: 100_000 };
        let small = share(None, Some(quarter), 2);
        assert!((small.cpus - 0.29).abs() < 1e-9);
        assert_eq!(InferencePlan::for_share(&small, None), InferencePlan { threads: 1, sessions: 1, spinning: false });
        let three = share(None, Some(Quota { quota_us: 300_000, period_us: 100_000 }), 8);
        assert_eq!(InferencePlan::for_share(&three, None), InferencePlan { threads: 3, sessions: 3, spinning: false });
        assert_eq!(InferencePlan::for_share(&three, Some(1)), InferencePlan { threads: 3, sessions: 1, spinning: true });
        let capped = share(None, Some(Quota { quota_us: 800_000, period_us: 100_000 }), 2);
        assert_eq!(capped.cpus, 2.0, "a quota above the affinity mask is capped by it");
        let whole = share(None, None, 2);
        assert_eq!((whole.cpus, &whole.source), (2.0, &ShareSource::Affinity));
        assert_eq!(InferencePlan::for_share(&whole, None), InferencePlan { threads: 2, sessions: 2, spinning: false });
        assert_eq!(InferencePlan::for_share(&share(None, None, 1), None), InferencePlan { threads: 1, sessions: 1, spinning: true });
    }

    #[test]
    fn quota_files_parse_in_both_cgroup_versions() {
        assert_eq!(parse_cpu_max("29000 100000\n"), Some(Quota { quota_us: 29_000, period_us: 100_000 }));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000"), Some(Quota { quota_us: 150_000, period_us: 100_000 }), "period defaults");
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("50000\n", "100000\n"), Some(Quota { quota_us: 50_000, period_us: 100_000 }));
        assert_eq!(parse_cfs("50000", "0"), None);
    }

    #[test]
    fn the_cgroup_directory_is_found_from_proc_self_cgroup_and_mountinfo() {
        let hybrid = "4:memory:/x\n1:cpu,cpuacct:/job/7\n0::/\n";
        let mounts = "25 24 0:22 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:8 - cgroup cgroup rw,cpu,cpuacct\n\
                      26 24 0:23 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            cgroup_dirs(hybrid, mounts),
            [(CgroupVersion::V1, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/job/7"), PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))]
        );
        // A container: cgroup v2, its namespace's root mounted as the hierarchy's root.
        let v2 = "0::/\n";
        let mounts = "30 29 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup_dirs(v2, mounts), [(CgroupVersion::V2, PathBuf::from("/sys/fs/cgroup"), PathBuf::from("/sys/fs/cgroup"))]);
        // A mount whose root is a sub-path (no namespace): the process's path is relative to it.
        let mounts = "30 29 0:26 /kubepods /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup_dirs("0::/kubepods/pod1\n", mounts)[0].1, PathBuf::from("/sys/fs/cgroup/pod1"));
        assert!(cgroup_dirs("0::/\n", "").is_empty(), "no v2 mount: nothing to read");
        assert_eq!(unescape(r"/a\040b"), "/a b");
    }

    /// The whole reading over a fake `/`: the process's own cgroup and its parent each have a
    /// quota; the tighter one counts, in either version.
    #[test]
    fn the_tightest_quota_on_the_path_to_the_mount_counts() {
        let root = tempfile::tempdir().unwrap();
        let write = |path: &str, text: &str| {
            let path = root.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write("proc/self/cgroup", "0::/outer/inner\n");
        write("proc/self/mountinfo", "30 29 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
        write("sys/fs/cgroup/cpu.max", "max 100000\n");
        write("sys/fs/cgroup/outer/cpu.max", "50000 100000\n");
        write("sys/fs/cgroup/outer/inner/cpu.max", "150000 100000\n");
        assert_eq!(read_quota(root.path()), Some((CgroupVersion::V2, Quota { quota_us: 50_000, period_us: 100_000 })));
        write("proc/self/cgroup", "3:cpu:/lambda\n");
        write("proc/self/mountinfo", "25 24 0:22 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n");
        write("sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1\n");
        write("sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n");
        write("sys/fs/cgroup/cpu/lambda/cpu.cfs_quota_us", "29000\n");
        write("sys/fs/cgroup/cpu/lambda/cpu.cfs_period_us", "100000\n");
        assert_eq!(read_quota(root.path()), Some((CgroupVersion::V1, Quota { quota_us: 29_000, period_us: 100_000 })));
        write("sys/fs/cgroup/cpu/lambda/cpu.cfs_quota_us", "-1\n");
        assert_eq!(read_quota(root.path()), None, "no limit anywhere");
    }
}
