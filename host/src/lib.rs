//! `qa-host`: serves extractive question answering by running a sandboxed WebAssembly guest
//! component that reaches its model through `wasi-nn`.
//!
//! The seams, one module each:
//! - [`api`]: the request and response of the original AWS sample (plus scores, offsets and
//!   timings) and the limits every edge enforces;
//! - [`models`]: where a model's files come from ([`models::ModelSource`]), by name;
//! - [`cache`]: models loaded once, re-checked in the background, evicted by budget;
//! - [`nn`]: the wasi-nn backend over ONNX Runtime that turns those files into graphs;
//! - [`guest`]: the wasmtime runtime that compiles, caches and runs the guest under a
//!   deadline and a memory cap;
//! - [`rollout`]: a candidate guest in shadow or canary mode, rolled back or promoted by its
//!   record;
//! - [`service`]: the one request handler tying them together;
//! - [`lambda`], [`server`] and [`eval`]: edges over the service (Lambda Runtime API,
//!   local HTTP, SQuAD evaluation).

pub mod api;
pub mod cache;
pub mod config;
pub mod eval;
pub mod guest;
pub mod lambda;
pub mod models;
pub mod nn;
pub mod rollout;
pub mod server;
pub mod service;
pub mod telemetry;
