use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    outlook_sync::install_crypto_provider();
    let cli = outlook_sync::cli::Cli::parse();
    match outlook_sync::cli::main(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
