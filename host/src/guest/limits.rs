//! What one guest instance may grow to: the sum of all its linear memories and of all its
//! tables, not each alone (a component may hold several core instances, each with its own
//! memory), and how many instances, memories and tables it may create.

use wasmtime::ResourceLimiter;

/// Counts of things a component instance may create; generous for what `wasm-component-ld`
/// produces (a handful of core instances, one or two memories and tables).
const MAX_INSTANCES: usize = 64;
const MAX_MEMORIES: usize = 8;
const MAX_TABLES: usize = 64;
/// Table elements over all tables (pointer-sized entries).
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Accounts an instance's memories and tables in total, and remembers a refusal so a trap
/// that follows it is reported as the memory limit.
#[derive(Debug)]
pub struct InstanceLimits {
    max_memory_bytes: usize,
    memory_bytes: usize,
    table_elements: usize,
    pub refused: bool,
}

impl InstanceLimits {
    pub fn new(max_memory_bytes: usize) -> Self {
        Self { max_memory_bytes, memory_bytes: 0, table_elements: 0, refused: false }
    }

    /// Bytes of linear memory the instance holds now, all memories together.
    #[cfg(test)]
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

impl ResourceLimiter for InstanceLimits {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(Self::grow(&mut self.memory_bytes, current, desired, self.max_memory_bytes, &mut self.refused))
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

    /// Two memories of a module that grow in turn: each alone stays under the cap, together
    /// they pass it, and the limiter refuses the growth that would.
    #[test]
    fn memories_count_together() {
        let mut config = Config::new();
        config.wasm_multi_memory(true);
        let engine = Engine::new(&config).unwrap();
        let module = Module::new(
            &engine,
            r#"(module
                (memory $a 1) (memory $b 1)
                (func (export "grow_a") (param i32) (result i32) (memory.grow $a (local.get 0)))
                (func (export "grow_b") (param i32) (result i32) (memory.grow $b (local.get 0))))"#,
        )
        .unwrap();
        let page = 64 << 10;
        let mut store = Store::new(&engine, InstanceLimits::new(100 * page));
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
            r#"(module
                (table $a 1 funcref) (table $b 1 funcref)
                (func (export "grow_a") (param i32) (result i32) (table.grow $a (ref.null func) (local.get 0)))
                (func (export "grow_b") (param i32) (result i32) (table.grow $b (ref.null func) (local.get 0))))"#,
        )
        .unwrap();
        let mut store = Store::new(&engine, InstanceLimits::new(1 << 30));
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
}
