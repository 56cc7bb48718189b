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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

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
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
