use clap::Parser;

// glibc's malloc showed up as ~12% of CPU under write load (many small, short-lived
// allocations across threads); mimalloc's thread-local free lists cut that down.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // One crypto provider for every TLS use in the process (listeners, the CLI client, and the
    // cluster port later). Installing it explicitly avoids rustls' runtime panic when it cannot
    // choose one.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = vaultd::cli::normalize_args(std::env::args_os());
    let cli = match vaultd::cli::Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { 1 } else { 0 });
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: starting the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(vaultd::cli::run(cli));
    std::process::exit(code);
}
