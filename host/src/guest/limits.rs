//! What one guest instance may grow to: the sum of all its linear memories and of all its
//! tables, not each alone (a component may hold several core instances, each with its own
//! memory), and how many instances, memories and tables it may create; and what all instances
//! of the host may hold together ([`InstanceBudget`], and [`MemoryBudget`] in [`crate::boundary`]), which matters once one
//! environment serves several invocations at once, or runs a candidate guest beside the
//! serving one.

use crate::boundary::MemoryBudget;
use crate::nn::Priority;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use wasmtime::ResourceLimiter;

/// Guest calls all guests of one host may run at once (`QA_GUEST_INSTANCES`): the serving
/// guest, one swapped in and a candidate each have an engine and a pool of their own, and
/// draw on this one count. A shadow call never takes the last free instance: a serving request
/// arriving meanwhile still finds one.
#[derive(Clone, Debug)]
pub struct InstanceBudget(Arc<Instances>);

#[derive(Debug)]
struct Instances {
    limit: u32,
    used: AtomicU32,
}

impl InstanceBudget {
    pub fn new(limit: u32) -> Self {
        Self(Arc::new(Instances { limit: limit.max(1), used: AtomicU32::new(0) }))
    }

    pub fn limit(&self) -> u32 {
        self.0.limit
    }

    /// Calls running now.
    pub fn in_use(&self) -> u32 {
        self.0.used.load(Ordering::Acquire)
    }

    /// A place for one call of `priority`, if one is free: held until the permit drops.
    pub fn take(&self, priority: Priority) -> Option<InstancePermit> {
        let free_after = match priority {
            Priority::Serving => 0,
            Priority::Shadow => 1,
        };
        let limit = self.0.limit;
        self.0
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| used.checked_add(1).filter(|&next| next + free_after <= limit))
            .ok()
            .map(|_| InstancePermit(self.clone()))
    }
}

/// One call's place in the [`InstanceBudget`], given back when dropped.
#[derive(Debug)]
pub struct InstancePermit(InstanceBudget);

impl Drop for InstancePermit {
    fn drop(&mut self) {
        let _ = self.0.0.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| Some(used.saturating_sub(1)));
    }
}

/// Counts of things a component instance may create; generous for what `wasm-component-ld`
/// produces (a handful of core instances, one or two memories and tables).
const MAX_INSTANCES: usize = 64;
const MAX_MEMORIES: usize = 8;
const MAX_TABLES: usize = 64;
/// Table elements over all tables (pointer-sized entries).
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Accounts an instance's memories and tables in total, and remembers a refusal so a trap
/// that follows it is reported as the memory limit: the instance's own (`refused`), or the
/// host's budget taken by other instances (`crowded`: the request may succeed later).
#[derive(Debug)]
pub struct InstanceLimits {
    max_memory_bytes: usize,
    memory_bytes: usize,
    table_elements: usize,
    budget: MemoryBudget,
    pub refused: bool,
    pub crowded: bool,
}

impl InstanceLimits {
    pub fn new(max_memory_bytes: usize, budget: MemoryBudget) -> Self {
        // An instance may never hold more than the whole budget: past that it is its own fault.
        let max_memory_bytes = max_memory_bytes.min(budget.limit().unwrap_or(usize::MAX));
        Self { max_memory_bytes, memory_bytes: 0, table_elements: 0, budget, refused: false, crowded: false }
    }

    /// Bytes of linear memory the instance holds now, all memories together.
    pub fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }

    fn grow(total: &mut usize, current: usize, desired: usize, max: usize, refused: &mut bool) -> bool {
        let next = total.saturating_sub(current).saturating_add(desired);
        if next > max {
            *refused = true;
            return false;
        }
        *total = next;
        true
    }
}

impl Drop for InstanceLimits {
    fn drop(&mut self) {
        self.budget.give_back(self.memory_bytes);
    }
}

impl ResourceLimiter for InstanceLimits {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let before = self.memory_bytes;
        if !Self::grow(&mut self.memory_bytes, current, desired, self.max_memory_bytes, &mut self.refused) {
            return Ok(false);
        }
        if !self.budget.take(self.memory_bytes - before) {
            self.memory_bytes = before;
            self.crowded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(Self::grow(&mut self.table_elements, current, desired, MAX_TABLE_ELEMENTS, &mut self.refused))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Config, Engine, Instance, Module, Store};

    /// Two places: two serving calls fill them; a shadow call needs one left over.
    #[test]
    fn instances_are_counted_together_and_a_shadow_leaves_the_last_one() {
        let budget = InstanceBudget::new(2);
        assert_eq!((budget.limit(), InstanceBudget::new(0).limit()), (2, 1), "at least one instance");
        let shadow = budget.take(Priority::Shadow).expect("one of two free: a shadow may take it");
        assert!(budget.take(Priority::Shadow).is_none(), "the last free place is for serving calls");
        let serving = budget.take(Priority::Serving).expect("the last place");
        assert!(budget.take(Priority::Serving).is_none(), "two in use of two");
        assert_eq!(budget.in_use(), 2);
        drop(shadow);
        assert!(budget.take(Priority::Shadow).is_none(), "one free, and it is the last");
        let again = budget.take(Priority::Serving).expect("a place came free");
        drop((serving, again));
        assert_eq!(budget.in_use(), 0);
    }

    /// Two memories of a module that grow in turn: each alone stays under the cap, together
    /// they pass it, and the limiter refuses the growth that would.
    #[test]
    fn memories_count_together() {
        let mut config = Config::new();
        config.wasm_multi_memory(true);
        let engine = Engine::new(&config).unwrap();
        let module = Module::new(
            &engine,
            wat::parse_str(
                r#"(module
                (memory $a 1) (memory $b 1)
                (func (export "grow_a") (param i32) (result i32) (memory.grow $a (local.get 0)))
                (func (export "grow_b") (param i32) (result i32) (memory.grow $b (local.get 0))))"#,
            )
            .unwrap(),
        )
        .unwrap();
        let page = 64 << 10;
        let mut store = Store::new(&engine, InstanceLimits::new(100 * page, MemoryBudget::new(None)));
        store.limiter(|limits| limits);
        let instance = Instance::new(&mut store, &module, &[]).unwrap();
        let grow_a = instance.get_typed_func::<i32, i32>(&mut store, "grow_a").unwrap();
        let grow_b = instance.get_typed_func::<i32, i32>(&mut store, "grow_b").unwrap();
        assert_eq!(store.data().memory_bytes(), 2 * page);
        assert_eq!(grow_a.call(&mut store, 60).unwrap(), 1, "a: 61 pages");
        assert_eq!(grow_b.call(&mut store, 60).unwrap(), -1, "b would make 122 pages in all");
        assert!(store.data().refused);
        assert_eq!(grow_b.call(&mut store, 38).unwrap(), 1, "b: 39 pages, 100 in all");
        assert_eq!(store.data().memory_bytes(), 100 * page);
        assert_eq!(grow_a.call(&mut store, 1).unwrap(), -1);
    }

    /// Two tables likewise: elements count over all tables, against [`MAX_TABLE_ELEMENTS`].
    #[test]
    fn tables_count_together() {
        let engine = Engine::default();
        let module = Module::new(
            &engine,
            wat::parse_str(
                r#"(module
                (table $a 1 funcref) (table $b 1 funcref)
                (func (export "grow_a") (param i32) (result i32) (table.grow $a (ref.null func) (local.get 0)))
                (func (export "grow_b") (param i32) (result i32) (table.grow $b (ref.null func) (local.get 0))))"#,
            )
            .unwrap(),
        )
        .unwrap();
        let mut store = Store::new(&engine, InstanceLimits::new(1 << 30, MemoryBudget::new(None)));
        store.limiter(|limits| limits);
        let instance = Instance::new(&mut store, &module, &[]).unwrap();
        let grow_a = instance.get_typed_func::<i32, i32>(&mut store, "grow_a").unwrap();
        let grow_b = instance.get_typed_func::<i32, i32>(&mut store, "grow_b").unwrap();
        let most = MAX_TABLE_ELEMENTS as i32;
        assert_eq!(grow_a.call(&mut store, most / 2).unwrap(), 1, "a: half the elements");
        assert_eq!(grow_b.call(&mut store, most / 2).unwrap(), -1, "b would pass the total");
        assert!(store.data().refused, "a refusal is remembered, so the trap after it reads as the limit");
        assert_eq!(grow_b.call(&mut store, most / 2 - 2).unwrap(), 1, "b: the rest, exactly the total");
        assert_eq!(grow_a.call(&mut store, 1).unwrap(), -1);
    }

    /// Two instances sharing a budget of 100 pages, each allowed 80: the second cannot take
    /// what the first holds (crowded, not its own limit), and gets it once the first's store
    /// is dropped.
    #[test]
    fn instances_share_the_host_s_budget_and_give_it_back() {
        let engine = Engine::default();
        let module = Module::new(
            &engine,
            wat::parse_str(r#"(module (memory 1) (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))"#).unwrap(),
        )
        .unwrap();
        let page = 64 << 10;
        let budget = MemoryBudget::new(Some(100 * page));
        let instance = |budget: &MemoryBudget| {
            let mut store = Store::new(&engine, InstanceLimits::new(80 * page, budget.clone()));
            store.limiter(|limits| limits);
            let instance = Instance::new(&mut store, &module, &[]).unwrap();
            let grow = instance.get_typed_func::<i32, i32>(&mut store, "grow").unwrap();
            (store, grow)
        };
        let (mut first, grow_first) = instance(&budget);
        assert_eq!(grow_first.call(&mut first, 59).unwrap(), 1, "first: 60 pages");
        assert_eq!(budget.in_use(), 60 * page);
        let (mut second, grow_second) = instance(&budget);
        assert_eq!(grow_second.call(&mut second, 59).unwrap(), -1, "60 + 60 pages pass the budget");
        assert!(second.data().crowded && !second.data().refused, "not its own limit: {:?}", second.data());
        assert_eq!(budget.in_use(), 61 * page, "the refused growth took nothing");
        drop(first);
        assert_eq!(budget.in_use(), page, "the first instance gave its pages back");
        assert_eq!(grow_second.call(&mut second, 59).unwrap(), 1, "now it fits");
        assert_eq!(grow_second.call(&mut second, 30).unwrap(), -1, "90 pages pass its own 80");
        assert!(second.data().refused);
        drop(second);
        assert_eq!(budget.in_use(), 0);
        // An instance alone may not hold more than the whole budget: that is its own limit.
        let small = MemoryBudget::new(Some(10 * page));
        let (mut alone, grow_alone) = instance(&small);
        assert_eq!(grow_alone.call(&mut alone, 20).unwrap(), -1);
        assert!(alone.data().refused && !alone.data().crowded);
    }
}
