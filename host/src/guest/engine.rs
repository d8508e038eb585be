//! The engines guests run on: wasmtime configured alike for compiling and running (so shipped
//! artifacts load), the pooling allocator sized from the settings, the linker with WASI and
//! wasi-nn, and the epoch ticker that deadlines count in.

use super::contract::{Linked, Version};
use super::sandbox::{HostState, nn_view};
use super::{GuestError, GuestSettings};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Epoch granularity: guest code yields (and deadlines are checked) every tick.
const TICK: Duration = Duration::from_millis(10);
/// Engine settings shared by compilation and execution (a precompiled artifact only loads
/// into an engine configured the same way).
pub fn engine_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config
}

/// The engine that compiles shipped artifacts (`compile-guest`): the one guests run on, for
/// this machine or, with `target` (a target triple such as `aarch64-unknown-linux-gnu`), for
/// the machine the artifacts will run on. Its artifacts load only where the running engine is
/// configured alike for that target; anywhere else they are ignored and the guest compiled.
pub fn ship_engine(settings: &GuestSettings, target: Option<&str>) -> Result<Engine, GuestError> {
    let mut config = runtime_config(settings);
    if let Some(target) = target {
        config.target(target).map_err(|e| GuestError::Engine(format!("target {target:?}: {e:#}")))?;
    }
    Engine::new(&config).map_err(|e| GuestError::Engine(format!("{e:#}")))
}

/// Core instances, memories and tables a component may hold: `wasm-component-ld` makes a
/// handful of each.
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
const TABLES_PER_COMPONENT: u32 = 8;
/// Linear memory kept resident in a pooled slot between instances: reset in place instead of
/// unmapped, so the next request does not fault the pages in again. Covers the shipped
/// guest's 8.4 MiB snapshot and what a typical request allocates above it; memory above this
/// is unmapped as usual. Each slot that has served a request keeps the pages it touched, up to
/// this much, resident.
const KEEP_RESIDENT: usize = 16 << 20;

/// The engine that runs guests: [`engine_config`] plus the pooling allocator, which keeps a
/// slot (memory, tables, stack) per possible instance, so instantiating a request's fresh
/// instance reuses one instead of mapping new memory.
pub(super) fn runtime_config(settings: &GuestSettings) -> Config {
    let mut pool = PoolingAllocationConfig::new();
    let instances = settings.instances.max(1);
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .total_memories(instances.saturating_mul(2))
        .max_memories_per_component(2)
        .total_tables(instances.saturating_mul(TABLES_PER_COMPONENT))
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .total_stacks(instances)
        .max_memory_size(settings.memory_bytes)
        .linear_memory_keep_resident(KEEP_RESIDENT.min(settings.memory_bytes))
        .table_keep_resident(1 << 20)
        // With `PAGEMAP_SCAN` (Linux 6.7+) only the pages a request wrote are reset, in place,
        // in at most 32 contiguous runs (the rest is unmapped and faulted back in later); the
        // shipped guest allocates above its snapshot (`guest/src/heap.rs`), so its writes are a
        // few runs: measured 0 page faults a request and 0.15 ms to reset. Without the ioctl
        // (older kernels), the first `KEEP_RESIDENT` bytes are copied back from the snapshot
        // (0.8-0.9 ms for the shipped guest's 8.4 MiB), also without faults.
        .pagemap_scan(Enabled::Auto);
    let mut config = engine_config();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

pub(super) fn linker(engine: &Engine) -> Result<Linker<HostState>, GuestError> {
    let mut linker: Linker<HostState> = Linker::new(engine);
    let err = |e: wasmtime::Error| GuestError::Instantiate(format!("{e:#}"));
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(err)?;
    crate::nn::wit::add_to_linker(&mut linker, nn_view).map_err(err)?;
    Ok(linker)
}

pub(super) fn link(linker: &Linker<HostState>, version: Version, component: &Component) -> Result<Linked<HostState>, GuestError> {
    let pre = linker.instantiate_pre(component).map_err(|e| GuestError::Instantiate(format!("{e:#}")))?;
    Linked::new(version, pre).map_err(|e| GuestError::Instantiate(format!("{e:#}")))
}

/// Advances the engine's epoch every [`TICK`] until `stop` is set (when the runtime drops).
pub(super) fn spawn_epoch_ticker(engine: Engine, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new().name("qa-epoch".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(TICK);
            engine.increment_epoch();
        }
    })?;
    Ok(())
}
