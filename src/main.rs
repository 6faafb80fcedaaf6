//! The `tollgate` command: run the gateway, or check a config file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tollgate::config::{self, LogFormat};

// Per-request buffers, header maps and futures are ~100 small, short-lived allocations; jemalloc's
// thread caches serve them in a fraction of glibc's instructions. mimalloc was as fast but
// touches more memory per idle connection (101 vs 41 KiB); BENCHMARKS.md, optimisation log.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// jemalloc's thread cache stops at 32 KiB by default, so pingora's 64 KiB upstream body buffer
// (one per proxied response) went to the arena every time, and allocating it triggered a cache
// GC pass that handed the small per-request objects back too: ~3k instructions per request.
// Cached up to 128 KiB, it is ~100. The `_RJEM_MALLOC_CONF` variable still overrides this.
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &u8 = &b"tcache_max:131072\0"[0];

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "An API gateway and edge reverse proxy"
)]
struct Cli {
    /// The config file (`-`: standard input, for `check`).
    #[arg(short, long, global = true, default_value = "gateway.toml")]
    config: PathBuf,
    /// Take over the listening sockets of a running tollgate (zero-downtime upgrade; see
    /// docs/operations/admin-reload-upgrade.md).
    #[arg(long, global = true)]
    upgrade: bool,
    /// Log line format (overrides `[log] format`).
    #[arg(long, global = true, value_enum)]
    log_format: Option<CliLogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the config file and exit: 0 when valid, 1 with every error otherwise.
    Check {
        /// Print the effective config (TOML, every default filled in, secrets redacted) instead
        /// of `FILE: ok`.
        #[arg(long)]
        print: bool,
    },
    /// Print the JSON Schema of gateway.toml (draft 2020-12), plugin tables included, for
    /// editors and validators (docs/editor-support.md). Reads no config file.
    Schema,
}

#[derive(Clone, Copy, ValueEnum)]
enum CliLogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One TLS crypto provider for the whole process (listeners, upstream checks, plugins that
    // fetch over HTTPS); installing fails only if one is already installed, which is fine.
    let _ = std::sync::Arc::unwrap_or_clone(config::crypto_provider()).install_default();
    let registry = tollgate::plugins::builtin_registry();
    let command = cli.command.unwrap_or(Command::Run);
    if let Command::Schema = command {
        return write_stdout(&config::schema_text(&registry), "tollgate schema");
    }
    let stdin = cli.config.as_os_str() == "-";
    let loaded = match (&command, stdin) {
        (Command::Check { .. }, true) => {
            // Errors name `<stdin>`; relative paths in it resolve from the working directory.
            let mut src = String::new();
            match std::io::Read::read_to_string(&mut std::io::stdin(), &mut src) {
                Ok(_) => config::load_str(std::path::Path::new("<stdin>"), &src, &registry),
                Err(e) => {
                    eprintln!("<stdin>: cannot read the config: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        (Command::Run, true) => {
            eprintln!(
                "-: the gateway reads its config from a file, which it watches and reloads; \
                 `-` (standard input) is for `tollgate check`"
            );
            return ExitCode::from(1);
        }
        _ => config::load(&cli.config, &registry),
    };
    let built = match loaded {
        Ok(b) => b,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(1);
        }
    };
    match command {
        // Answered before any config is read.
        Command::Schema => ExitCode::SUCCESS,
        Command::Check { print: true } => write_stdout(
            &config::effective_text(&built.config, &registry),
            "tollgate check --print",
        ),
        Command::Check { print: false } => {
            let shown = if stdin {
                "<stdin>".into()
            } else {
                cli.config.display().to_string()
            };
            println!("{shown}: ok");
            ExitCode::SUCCESS
        }
        Command::Run => {
            let format = match cli.log_format {
                Some(CliLogFormat::Json) => LogFormat::Json,
                Some(CliLogFormat::Text) => LogFormat::Text,
                None => built.config.log.format,
            };
            tollgate::logging::init(format, &built.config.log.level);
            tracing::info!(
                config = %cli.config.display(),
                routes = built.config.routes.len(),
                upstreams = built.config.upstreams.len(),
                listeners = ?built.config.listeners.iter().map(|l| l.address.to_string()).collect::<Vec<_>>(),
                "starting tollgate {}", env!("CARGO_PKG_VERSION")
            );
            match tollgate::server::build(built, cli.config.clone(), registry, cli.upgrade) {
                Ok(server) => server.run_forever(),
                Err(e) => {
                    // Start-up errors name listeners and paths from the file: escaped like
                    // config errors, so each stays one line.
                    let path = cli.config.display().to_string();
                    let message = e.to_string();
                    eprintln!("{}: {}", config::Escaped(&path), config::Escaped(&message));
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// Writes `text` to stdout without `print!`, which panics when stdout is gone
/// (`tollgate schema | head`).
fn write_stdout(text: &str, what: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let written = std::io::Write::write_all(&mut out, text.as_bytes())
        .and_then(|()| std::io::Write::flush(&mut out));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{what}: cannot write to standard output: {e}");
            ExitCode::from(1)
        }
    }
}
