//! The QA guest component. On `wasm32-wasip2` this binary is one component with two faces:
//! the `qa:extractive/qa` export that the host calls per request, and `wasi:cli/run` (this
//! `main`) for `wasmtime run` with a JSON fixture on standard input.

#[cfg(target_family = "wasm")]
mod component;
#[cfg(target_family = "wasm")]
mod heap;

#[cfg(target_family = "wasm")]
#[global_allocator]
static HEAP: heap::Heap = heap::Heap::new();

#[cfg(target_family = "wasm")]
fn main() {
    std::process::exit(component::run_fixture());
}

#[cfg(not(target_family = "wasm"))]
fn main() {
    eprintln!("qa-guest is a WebAssembly component: build it with `cargo build -p qa-guest --target wasm32-wasip2 --release`");
    std::process::exit(2);
}
