//! `wasmtime run [options] component.wasm [args]`: wasmtime's own run command, with the
//! ONNX wasi-nn backend compiled in. Only `run` is offered (and is the default).

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "run") {
        args.remove(1);
    }
    match wasmtime_cli::commands::RunCommand::parse_from(args).execute() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("Error: {error:?}");
            ExitCode::FAILURE
        }
    }
}
