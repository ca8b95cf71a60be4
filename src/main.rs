//! The `pgward` command line: run the proxy, check a configuration, import a PgBouncer
//! configuration, or start the demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pgward",
    version,
    about = "PostgreSQL connection pooler and tenancy proxy"
)]
struct Cli {
    /// Configuration file (TOML); runs the proxy in the foreground.
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy in the foreground (same as `pgward --config FILE`).
    Run,
    /// Validate a configuration file and print the effective configuration.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Write the pgward.toml equivalent to a pgbouncer.ini; one line on stderr per key not
    /// carried over. Exits 1 when the result would not serve the ini's clients.
    ImportPgbouncer {
        /// The pgbouncer.ini to read (`%include`s are followed).
        pgbouncer_ini: PathBuf,
        /// The userlist.txt (default: the ini's auth_file).
        #[arg(long)]
        userlist: Option<PathBuf>,
        /// Write here instead of stdout.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// A database name the `*` fallback entry stands for (repeat for several).
        #[arg(long = "wildcard-db", value_name = "NAME")]
        wildcard_db: Vec<String>,
    },
    /// Start a throwaway PostgreSQL with two tenant schemas and pgward in front of it.
    Demo {
        /// Port for pgward's Postgres listener.
        #[arg(long, default_value_t = 6432)]
        port: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::CheckConfig { file }) => match pgward::config::Config::load(&file) {
            Ok(c) => {
                for o in &c.origins {
                    println!("# {} from the environment: {}", o.key, o.from);
                }
                print!("{}", pgward::config::render_effective(&c));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pgward: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Cmd::ImportPgbouncer {
            pgbouncer_ini,
            userlist,
            output,
            wildcard_db,
        }) => pgward::import::run_cli(
            &pgbouncer_ini,
            &pgward::import::Options {
                userlist,
                wildcard_databases: wildcard_db,
            },
            output.as_deref(),
        ),
        Some(Cmd::Demo { port }) => {
            init_logging("human");
            match runtime(0).block_on(pgward::demo::run(port)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("pgward demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Cmd::Run) | None => {
            let Some(path) = cli.config else {
                eprintln!("pgward: no configuration given; use `pgward --config FILE` (or `pgward demo` to try it out)");
                return ExitCode::from(2);
            };
            let config = match pgward::config::Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("pgward: {e}");
                    return ExitCode::FAILURE;
                }
            };
            init_logging(&config.log_format);
            let workers = config.workers;
            match runtime(workers).block_on(pgward::run::run_foreground(path, config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("pgward: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// One worker thread (`workers = 1`, or `0` on a one-core machine) runs tokio's
/// current-thread scheduler: no work stealing, no cross-thread wake-ups; less CPU per
/// transaction than the multi-thread scheduler and, here, more throughput than it with one
/// worker (docs/architecture.md, "Worker threads").
fn runtime(workers: usize) -> tokio::runtime::Runtime {
    let threads = match workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut b = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    b.enable_all().build().expect("tokio runtime")
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGWARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}
