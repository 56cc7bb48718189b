use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = jobbox::cli::Cli::parse();
    // The host logs at info; one-shot commands only warn. JOBBOX_LOG
    // (an EnvFilter directive such as "jobbox=debug") overrides both.
    let default = match cli.command {
        jobbox::cli::Command::Run => "info",
        _ => "warn",
    };
    let filter = EnvFilter::try_from_env("JOBBOX_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = cli.global.log_format == jobbox::cli::LogFormat::Json;
    match cli.global.log_format {
        // One JSON object per line, with the attempt's span fields (job id,
        // kind, attempt, epoch) on every line logged within it.
        jobbox::cli::LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        // Colours only for a terminal: a redirected log stays plain text.
        jobbox::cli::LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(jobbox::cli::main(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The reader of our output went away (`| head -1`): stop quietly.
        Err(e) if jobbox::cli::is_broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if json {
                // Still one line, and still JSON for whatever collects it.
                let line = serde_json::json!({
                    "level": "ERROR",
                    "fields": { "message": format!("{e:#}") },
                });
                eprintln!("{line}");
            } else {
                eprintln!("error: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
