//! `qa-host`: serves extractive question answering by running a sandboxed WebAssembly guest
//! component that reaches its model through `wasi-nn`.
//!
//! The rooms, lowest first; each uses only rooms above it in this list (`tests/layers.rs`
//! keeps it so):
//! - [`boundary`]: what the host holds on a guest's behalf, charged to one account per request;
//! - [`models`]: where a model's files come from ([`models::ModelSource`]: S3, EFS, the image);
//! - [`nn`]: the wasi-nn backend over ONNX Runtime that turns those files into graphs;
//! - [`guest`]: the wasmtime runtime that compiles, caches and runs the guest under a
//!   deadline and a memory cap;
//! - [`model_cache`]: models loaded once, re-checked in the background, evicted by budget;
//! - [`api`]: the request and response of the original AWS sample (plus scores, offsets and
//!   timings), the limits every edge enforces, and every error as the API reports it;
//! - [`telemetry`]: logs, CloudWatch EMF lines and Prometheus metrics;
//! - [`rollout`]: a candidate guest in shadow or canary mode, routed to, rolled back or
//!   promoted by its record;
//! - [`config`]: every setting, read once;
//! - [`service`]: the request path, the one handler every edge calls;
//! - [`bootstrap`]: the composition root that builds the parts once from the configuration;
//! - [`eval`], [`server`] and [`lambda`]: edges over the service (SQuAD evaluation, local
//!   HTTP, the Lambda Runtime API).

pub mod api;
pub mod bootstrap;
pub mod boundary;
pub mod config;
pub mod eval;
pub mod guest;
pub mod lambda;
pub mod model_cache;
pub mod models;
pub mod nn;
pub mod rollout;
pub mod server;
pub mod service;
pub mod telemetry;
