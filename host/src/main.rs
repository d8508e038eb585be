//! `qa-host`: ask one question, serve HTTP, or evaluate on SQuAD.

use anyhow::{Context, anyhow};
use clap::{Args, Parser, Subcommand};
use qa_host::api::{QaRequest, Questions};
use qa_host::config::HostConfig;
use qa_host::guest::GuestLocation;
use qa_host::service::QaService;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(version, about = "Extractive question answering in a WebAssembly guest over wasi-nn")]
struct Cli {
    #[command(flatten)]
    host: HostArgs,
    /// Without a command, `qa-host` is a Lambda bootstrap when `AWS_LAMBDA_RUNTIME_API` is set.
    #[command(subcommand)]
    command: Option<Command>,
}

/// Where the parts are; each flag overrides the environment variable named in its help, which
/// `HostConfig` reads (once, with every other setting).
#[derive(Args)]
struct HostArgs {
    /// Directory of model directories [env: QA_MODELS_DIR].
    #[arg(long, global = true)]
    models_dir: Option<PathBuf>,
    /// Guest component (.wasm): a path or s3://bucket/key [env: QA_GUEST].
    #[arg(long, global = true)]
    guest: Option<GuestLocation>,
    /// Cache for compiled guests [env: QA_CACHE_DIR].
    #[arg(long, global = true)]
    cache_dir: Option<PathBuf>,
    /// libonnxruntime.so [env: ORT_DYLIB_PATH].
    #[arg(long, global = true)]
    onnxruntime: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Answer one question (or several, `--question` repeated) and print the response as JSON.
    Ask(AskArgs),
    /// Serve `POST /` (the API Gateway sample's body) over HTTP.
    Serve {
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
    },
    /// Serve the Lambda Runtime API (what `qa-host` does with no command inside Lambda).
    Lambda,
    /// Compile the guest for this host's engine and write the artifacts beside the `.wasm`
    /// (`<name>.wasm.<sha256-prefix>[.<kind>].cwasm`: the guest, the instrumented guest, and
    /// its snapshot for each model in the models directory), so deployments skip compiles at
    /// cold start. With `QA_GUEST_ARTIFACT_KEY` set, each gets a signature (`.sig`).
    CompileGuest {
        /// Compile for another machine: a target triple (`aarch64-unknown-linux-gnu` for an
        /// arm64 Lambda function, `x86_64-unknown-linux-gnu`). Default: this machine.
        #[arg(long)]
        target: Option<String>,
    },
    /// Replace each model directory's `model.onnx` with ONNX Runtime's optimized graph of it
    /// and mark it (`model.optimized.json`: the release, the file's CRC-32), so that this
    /// ONNX Runtime release loads it without optimizing again (its cold load in about 0.88x
    /// the time; docs/performance.md). Run on the copy a package ships, not on a model you keep editing.
    OptimizeModel {
        /// Model directories (each holding `model.onnx`).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
    /// Exact match and F1 on a SQuAD v1.1 JSON file.
    Eval(EvalArgs),
}

#[derive(Args)]
struct AskArgs {
    /// A request body as sent to the API (`{"model_type","question","context",...}`);
    /// the other flags override its fields.
    #[arg(long, conflicts_with = "context_file")]
    request: Option<PathBuf>,
    /// The question; repeat it to ask several over the one context in one call (the
    /// response then has `results`, one per question).
    #[arg(long, required_unless_present = "request")]
    question: Vec<String>,
    #[arg(long, conflicts_with = "context_file")]
    context: Option<String>,
    #[arg(long)]
    context_file: Option<PathBuf>,
    /// Model name (a directory under the models directory); the default model if absent.
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    top_k: Option<u32>,
    #[arg(long)]
    max_answer_len: Option<u32>,
    #[arg(long)]
    handle_impossible_answer: bool,
}

#[derive(Args)]
struct EvalArgs {
    file: PathBuf,
    #[arg(long)]
    model: Option<String>,
    /// Evaluate only the first N questions.
    #[arg(long, conflicts_with = "sample")]
    limit: Option<usize>,
    /// Evaluate N questions drawn at random from the whole file (see --seed).
    #[arg(long)]
    sample: Option<usize>,
    /// Seed of --sample and --haystack: the same seed asks the same questions over the same
    /// contexts.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Hide each question's paragraph among other articles' paragraphs until its context has
    /// at least this many bytes (the long-document evaluation; 0: the paragraph alone).
    #[arg(long, default_value_t = 0)]
    haystack: usize,
    /// How windows are cut and compared (`document` or `pipeline`); the request
    /// default when absent.
    #[arg(long, value_parser = qa_host::guest::Decoding::from_name)]
    decoding: Option<qa_host::guest::Decoding>,
    /// Write {id: answer} predictions here (the official script's format).
    #[arg(long)]
    predictions: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let process_started = std::time::Instant::now();
    let cli = Cli::parse();
    let under_lambda =
        matches!(cli.command, Some(Command::Lambda)) || (cli.command.is_none() && std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some());
    // The settings first, so logging follows them; a bad one is reported through the default
    // logging, as every start-up failure is.
    let config = HostConfig::from_env();
    let telemetry = config.as_ref().map(|c| c.telemetry.clone()).unwrap_or_default();
    qa_host::telemetry::init_logging(under_lambda, &telemetry);
    match run(cli, config, process_started).await {
        Ok(code) => code,
        Err(Failure::Start(error)) if under_lambda => {
            let message = describe(&error);
            tracing::error!(reason = %message, "start-up failed");
            qa_host::lambda::report_init_error("QaHost.StartFailed", &message).await;
            eprintln!("qa-host: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Start(error) | Failure::Run(error)) => {
            eprintln!("qa-host: {}", describe(&error));
            ExitCode::from(2)
        }
    }
}

/// Writes one line of output. A reader that has gone (`qa-host ask | head -1`) ends the output
/// quietly, as other command-line tools do, where `println!` would panic.
fn print_line(text: impl std::fmt::Display) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error).context("writing to standard output"),
        _ => Ok(()),
    }
}

/// The error and its causes on one line, each cause once: many of this crate's errors already
/// print their source, which anyhow's `{:#}` would repeat.
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain().map(ToString::to_string) {
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

/// Why `qa-host` stopped: before it could serve (under Lambda, reported as an init error), or
/// while running a command.
enum Failure {
    Start(anyhow::Error),
    Run(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::Run(error)
    }
}

/// Reads the configuration (flags over the environment) and runs the command.
async fn run(
    cli: Cli,
    config: Result<HostConfig, qa_host::config::ConfigError>,
    process_started: std::time::Instant,
) -> Result<ExitCode, Failure> {
    let mut config = config.map_err(|e| Failure::Start(e.into()))?;
    let HostArgs { models_dir, guest, cache_dir, onnxruntime } = cli.host;
    config.models_dir = models_dir.unwrap_or(config.models_dir);
    config.guest_wasm = guest.unwrap_or(config.guest_wasm);
    config.cache_dir = cache_dir.unwrap_or(config.cache_dir);
    config.onnxruntime = onnxruntime.or(config.onnxruntime);
    let command = match cli.command {
        Some(command) => command,
        None if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() => Command::Lambda,
        None => return Err(Failure::Start(anyhow!("no command given (try --help); without one, AWS_LAMBDA_RUNTIME_API must be set"))),
    };
    match command {
        Command::CompileGuest { target } => Ok(compile_guest(&config, target.as_deref()).await?),
        Command::OptimizeModel { dirs } => Ok(optimize_models(&config, &dirs)?),
        // One question, then exit: a snapshot compiled now would never be used.
        Command::Ask(args) => ask(start(&mut config, false).await?, args).await,
        Command::Serve { addr } => serve(start(&mut config, true).await?, addr, &config).await,
        Command::Lambda => lambda(start(&mut config, true).await?, process_started).await,
        Command::Eval(args) => eval(start(&mut config, true).await?, args).await,
    }
}

/// The service, started: the guest fetched if it lives in S3, loaded, and the `QA_PRELOAD`
/// models loaded. Failures here are start-up failures.
async fn start(config: &mut HostConfig, compile_snapshots: bool) -> Result<Arc<QaService>, Failure> {
    config.compile_snapshots = compile_snapshots;
    let service = Arc::new(qa_host::bootstrap::start(config).await.map_err(|e| Failure::Start(e.into()))?);
    // Before a SnapStart snapshot no request is waiting: every model of the image is loaded
    // (and its guest prepared) unless QA_PRELOAD names which.
    let preload = match &config.lambda {
        Some(lambda) if lambda.snap_start && config.preload.is_empty() => service.unchanging_models(),
        _ => config.preload.clone(),
    };
    service.preload(&preload).await.map_err(|e| Failure::Start(anyhow!(e).context(format!("preloading {preload:?}"))))?;
    Ok(service)
}

/// `ask`: builds the request from `--request` and the flags, prints the response (exit 0) or
/// the error body (exit 1).
async fn ask(service: Arc<QaService>, args: AskArgs) -> Result<ExitCode, Failure> {
    let AskArgs { request, question, context, context_file, model, top_k, max_answer_len, handle_impossible_answer } = args;
    let mut request = match request {
        Some(path) => {
            let body = std::fs::read(&path).with_context(|| path.display().to_string())?;
            QaRequest::from_json(&body).with_context(|| path.display().to_string())?
        }
        None => QaRequest::new(String::new(), String::new()),
    };
    if let Some(path) = context_file {
        request.context = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    }
    match <[String; 1]>::try_from(question) {
        Ok([one]) => request.questions = Questions::One(one),
        Err(many) if many.is_empty() => {}
        Err(many) => request.questions = Questions::Many(many),
    }
    request.context = context.unwrap_or(request.context);
    request.model_type = model.or(request.model_type);
    request.top_k = top_k.or(request.top_k);
    request.max_answer_len = max_answer_len.or(request.max_answer_len);
    if handle_impossible_answer {
        request.handle_impossible_answer = Some(true);
    }
    match service.reply_within(request, None, "cli").await {
        Ok(response) => {
            print_line(serde_json::to_string_pretty(&response).context("printing the response")?)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            print_line(error.body("cli"))?;
            eprintln!("qa-host: {error}");
            Ok(ExitCode::from(1))
        }
    }
}

async fn serve(service: Arc<QaService>, addr: SocketAddr, config: &HostConfig) -> Result<ExitCode, Failure> {
    qa_host::server::serve(service, addr, config.serve).await.with_context(|| format!("serve on {addr}"))?;
    Ok(ExitCode::SUCCESS)
}

async fn lambda(service: Arc<QaService>, process_started: std::time::Instant) -> Result<ExitCode, Failure> {
    qa_host::lambda::run(service, process_started).await.map_err(|e| anyhow!(e).context("lambda runtime"))?;
    Ok(ExitCode::SUCCESS)
}

async fn eval(service: Arc<QaService>, args: EvalArgs) -> Result<ExitCode, Failure> {
    use qa_host::eval;
    let EvalArgs { file, model, limit, sample, seed, haystack, decoding, predictions } = args;
    let bytes = std::fs::read(&file).with_context(|| file.display().to_string())?;
    let all = eval::load_squad(&bytes).with_context(|| format!("{}: not SQuAD v1.1 JSON", file.display()))?;
    let mut questions = match sample {
        Some(n) => eval::sample(&all, n, seed),
        None => all.iter().take(limit.unwrap_or(usize::MAX)).cloned().collect(),
    };
    if haystack > 0 {
        questions = eval::in_haystack(&questions, &all, haystack, seed);
    }
    let mut predicted = BTreeMap::new();
    let mut report = eval::evaluate(&service, &questions, model, decoding, &mut predicted).await;
    report.haystack_bytes = haystack;
    if let Some(path) = predictions {
        let json = serde_json::to_vec_pretty(&predicted).context("predictions as JSON")?;
        std::fs::write(&path, json).with_context(|| path.display().to_string())?;
    }
    print_line(serde_json::to_string_pretty(&report).context("printing the report")?)?;
    Ok(ExitCode::SUCCESS)
}

/// Optimizes each model directory's graph in place and prints what its marker records.
fn optimize_models(config: &HostConfig, dirs: &[PathBuf]) -> anyhow::Result<ExitCode> {
    qa_host::nn::init_onnx_runtime(config.onnxruntime.as_deref(), &config.session)?;
    let backend = qa_host::nn::onnx::OnnxBackend { settings: config.session };
    for dir in dirs {
        let started = std::time::Instant::now();
        let done = backend.optimize_model_dir(dir)?;
        print_line(serde_json::to_string(&done.marker).context("printing the marker")?)?;
        eprintln!("qa-host: optimized {} in {} ms", done.model.display(), started.elapsed().as_millis());
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes beside the guest what a deployment ships: the guest compiled for this host, the
/// instrumented guest, and the guest's snapshot for each model baked into the deployment.
async fn compile_guest(config: &HostConfig, target: Option<&str>) -> anyhow::Result<ExitCode> {
    use qa_host::guest::{Artifacts, GuestRuntime, ship_engine, write_shipped_artifact};
    let started = std::time::Instant::now();
    let key = Artifacts::key_from_env();
    let engine = ship_engine(&config.guest_settings(), target)?;
    let GuestLocation::File(wasm) = &config.guest_wasm else {
        anyhow::bail!("compile-guest compiles a guest on local disk; QA_GUEST={} is in S3", config.guest_wasm);
    };
    let path = write_shipped_artifact(&engine, wasm, key.as_deref())?;
    print_line(path.display())?;
    let catalog = qa_host::models::ModelCatalog::build(&config.models_dir, &config.manifest, config.s3.clone());
    let mut models = Vec::new();
    for name in catalog.names() {
        if let Some(source) = catalog.get(name).filter(|s| !s.can_change()) {
            let local = source.fetch().await.with_context(|| format!("model {name}"))?;
            models.push((name.to_string(), local.dir));
        }
    }
    let runtime =
        GuestRuntime::load(wasm, Artifacts::from_env(&config.cache_dir).with_cache_limit(config.cache_bytes), config.guest_settings())
            .await?;
    for path in runtime.ship_snapshots(&models, key.as_deref(), &engine).await? {
        print_line(path.display())?;
    }
    let names: Vec<&str> = models.iter().map(|(name, _)| name.as_str()).collect();
    let target = target.unwrap_or("this machine");
    eprintln!("qa-host: compiled {} and its snapshots for {names:?} for {target} in {} ms", wasm.display(), started.elapsed().as_millis());
    Ok(ExitCode::SUCCESS)
}
