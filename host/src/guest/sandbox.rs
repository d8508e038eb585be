//! One call's sandbox: a store with its own WASI context (one model's directory mounted
//! read-only, no network, randomness from the kernel), its own resource table, its wasi-nn
//! state and the request's account, the instance limits and the deadline; and, when the call
//! ends in a trap, what stopped it.

use super::limits::InstanceLimits;
use super::{GuestError, GuestRuntime, MAX_ERROR_BYTES};
use crate::boundary::{Account, Refused, bound_text};
use crate::nn::{NnState, NnView};
use std::path::Path;
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Where the guest sees the models directory.
pub const MODELS_MOUNT: &str = "/models";
/// Bytes of guest stderr kept per instance (panic messages end up in error reports).
const STDERR_CAPACITY: usize = 64 * 1024;
/// Handles (WASI streams, pollables, wasi-nn tensors...) an instance may hold at once.
const MAX_HANDLES: usize = 4096;
/// What one entry of a store's handle table costs the host, at most (the value it holds is
/// charged by whoever puts it there).
const HANDLE_ENTRY_BYTES: usize = 64;
/// What every request's account holds from the start: the WASI context's bounded state (its
/// stderr pipe, its handle table full).
pub(super) const WASI_RESERVE: u64 = (STDERR_CAPACITY + MAX_HANDLES * HANDLE_ENTRY_BYTES) as u64;

/// Per-store state: WASI, wasi-nn and the limiter.
pub(super) struct HostState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) nn: NnState,
    /// Every byte the host holds because of this store's guest.
    pub(super) account: Account,
    pub(super) limits: InstanceLimits,
    pub(super) stderr: MemoryOutputPipe,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

pub(super) fn nn_view(state: &mut HostState) -> NnView<'_> {
    NnView { state: &mut state.nn, table: &mut state.table, account: &mut state.account }
}

impl GuestRuntime {
    /// A store for one call: WASI with only one model's directory mounted (`mount`: its name
    /// and directory), the call's wasi-nn state, the instance limits, and the deadline.
    pub(super) fn store(&self, mount: Option<(&str, &Path)>, nn: NnState, deadline: Duration) -> Result<Store<HostState>, GuestError> {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stderr(stderr.clone()).allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        kernel_seeded_random(&mut wasi).map_err(GuestError::Entropy)?;
        if let Some((name, dir)) = mount {
            wasi.preopened_dir(dir, format!("{MODELS_MOUNT}/{name}"), FsPerms::ReadOnly)
                .map_err(|e| GuestError::Mount { path: dir.to_path_buf(), reason: format!("{e:#}") })?;
        }
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HANDLES);
        let limits = InstanceLimits::new(self.settings.memory_bytes, self.settings.memory_total.clone());
        let mut account = Account::new(self.settings.nn.max_host_bytes, self.settings.memory_total.clone());
        account.charge(WASI_RESERVE, "the WASI context").map_err(|refused| self.over_budget(&refused))?;
        let state = HostState { wasi: wasi.build(), table, nn, account, limits, stderr };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        sync_hostcall_fuel(&mut store);
        // Guest code yields to the executor every tick (so the call's timeout can fire) and
        // traps once the deadline has passed.
        let until = Instant::now() + deadline;
        store.epoch_deadline_callback(move |_| {
            Ok(if Instant::now() >= until { UpdateDeadline::Interrupt } else { UpdateDeadline::Yield(1) })
        });
        store.set_epoch_deadline(1);
        Ok(store)
    }

    pub(super) fn classify_trap(&self, store: &Store<HostState>, error: wasmtime::Error, deadline: Duration) -> GuestError {
        let state = store.data();
        if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return GuestError::Timeout(deadline);
        }
        if error.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() {
            return GuestError::Busy(self.settings.instances);
        }
        if state.limits.refused {
            let own = self.settings.memory_bytes.min(self.settings.memory_total.limit().unwrap_or(usize::MAX));
            return GuestError::MemoryLimit { limit_mb: own >> 20 };
        }
        if state.limits.crowded {
            return GuestError::Crowded { limit_mb: self.settings.memory_total.limit().unwrap_or(usize::MAX) >> 20 };
        }
        // A refused charge traps where the import has no error to return (the tensor
        // constructor) and the trap says so; a refusal the guest got as a wasi-nn error and
        // went on from is not what stopped it.
        if let Some(refused) = state.account.refused()
            && error.chain().any(|cause| cause.to_string().contains(&refused.to_string()))
        {
            return self.over_budget(refused);
        }
        if is_hostcall_fuel_exhausted(&error) {
            return GuestError::HostBudget(format!(
                "it passed the host more in one call than the {} bytes its request had left of {} (QA_GUEST_HOST_MB)",
                store.hostcall_fuel(),
                state.account.budget()
            ));
        }
        let stderr = state.stderr.contents();
        let stderr = String::from_utf8_lossy(&stderr);
        let last_lines: Vec<&str> = stderr.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect();
        let mut message = format!("{error:#}");
        if !last_lines.is_empty() {
            message.push_str(&format!("; guest stderr: {}", last_lines.join(" | ")));
        }
        // A guest that trapped after a wasi-nn call failed: what the backend said (the guest
        // may have reported it in its own words, or not at all).
        if let Some(detail) = state.nn.last_failure() {
            message.push_str(&format!("; its last wasi-nn error: {detail}"));
        }
        GuestError::Trap(bound_text(message, MAX_ERROR_BYTES))
    }
}

impl GuestRuntime {
    /// The error for a charge the request's account refused: its own budget, or the host-wide
    /// one other requests hold (which may come free).
    pub(super) fn over_budget(&self, refused: &Refused) -> GuestError {
        if refused.crowded {
            GuestError::Crowded { limit_mb: self.settings.memory_total.limit().unwrap_or(usize::MAX) >> 20 }
        } else {
            GuestError::HostBudget(refused.to_string())
        }
    }
}

/// Sets the store's hostcall fuel (the most wasmtime copies into the host for one call or one
/// result, before the host sees it) to what the request's account has left.
pub(super) fn sync_hostcall_fuel(store: &mut Store<HostState>) {
    let fuel = usize::try_from(store.data().account.remaining()).unwrap_or(usize::MAX);
    store.set_hostcall_fuel(fuel);
}

/// Whether `error` is wasmtime refusing to copy more into the host than the store's hostcall
/// fuel allows (its error type is private: its message is matched, and a test proves it).
fn is_hostcall_fuel_exhausted(error: &wasmtime::Error) -> bool {
    error.chain().any(|cause| cause.to_string().contains("fuel allocated for hostcalls has been exhausted"))
}

/// Gives a store's WASI context random sources seeded from the kernel now (one `getrandom` each),
/// in place of wasmtime-wasi's default, which derives them from the thread's `ThreadRng`: a
/// generator a SnapStart snapshot freezes, whose state every restored environment would share
/// (rand documents that it is not reseeded on restore and recommends `SysRng`).
fn kernel_seeded_random(wasi: &mut WasiCtxBuilder) -> Result<(), rand::rngs::SysError> {
    use rand::{SeedableRng, TryRng};
    let kernel = &mut rand::rngs::SysRng;
    let seed = u128::from(kernel.try_next_u64()?) << 64 | u128::from(kernel.try_next_u64()?);
    wasi.secure_random(rand::rngs::StdRng::try_from_rng(kernel)?)
        .insecure_random(rand::rngs::SmallRng::try_from_rng(kernel)?)
        .insecure_random_seed(seed);
    Ok(())
}
