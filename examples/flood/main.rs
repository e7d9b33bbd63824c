//! A flood of new clients against a running tollgate server: `scripts/flood.sh` starts the
//! demo server with a small `[store] max_keys` and runs this against it.
//!
//! ```text
//! cargo run --release --example flood -- --url http://127.0.0.1:3000 --pid PID \
//!     [--addresses 1000000] [--concurrency 32] [--partner-key KEY --partner-burst N] \
//!     [--scrape /metrics] [--max-growth-mib 16]
//! ```
//!
//! Exits non-zero when a flooder (a first-time client) was refused, when the identified
//! client was not answered exactly, or when the server's resident memory grew by more than
//! `--max-growth-mib` from a tenth of the flood (the store full) to its end.

mod driver;

use std::process::ExitCode;

use clap::Parser;

/// Floods a tollgate server with first-time clients behind a trusted proxy.
#[derive(Parser)]
#[command(name = "flood")]
struct Args {
    /// The server's base URL.
    #[arg(long)]
    url: String,
    /// The server's process id (its resident memory is sampled).
    #[arg(long)]
    pid: u32,
    /// The path each request asks for.
    #[arg(long, default_value = "/api/simple")]
    path: String,
    /// Distinct client addresses (one request each).
    #[arg(long, default_value_t = 1_000_000)]
    addresses: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// The identified client's API key.
    #[arg(long, requires = "partner_burst")]
    partner_key: Option<String>,
    /// The burst of the identified client's tier (which must not refill during the run).
    #[arg(long)]
    partner_burst: Option<u64>,
    /// GET this path at every tenth of the flood (a metrics scrape).
    #[arg(long)]
    scrape: Option<String>,
    /// The most the server's resident memory may grow after the first tenth, in MiB.
    #[arg(long, default_value_t = 16.0)]
    max_growth_mib: f64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let options = driver::Options {
        base: args.url.trim_end_matches('/').to_owned(),
        path: args.path,
        addresses: args.addresses,
        concurrency: args.concurrency,
        partner: args.partner_key.zip(args.partner_burst),
        pid: args.pid,
        scrape: args.scrape,
    };
    let report = driver::flood(&options).await;
    report.print();
    let mut ok = true;
    if report.admitted != args.addresses {
        println!(
            "FAIL: {} of {} first-time clients were refused",
            args.addresses - report.admitted,
            args.addresses
        );
        ok = false;
    }
    if let Some((_, burst)) = &options.partner {
        if report.partner_exact(*burst) {
            println!("identified client: exact (remaining {}..0, then 429)", burst - 1);
        } else {
            println!("FAIL: the identified client was not answered exactly");
            ok = false;
        }
    }
    if let Some((first, last)) = report.growth_after(0.1) {
        let growth = (last as f64 - first as f64) / 1024.0;
        println!(
            "rss after the first tenth {:.1} MiB, at the end {:.1} MiB: growth {growth:+.1} MiB (limit {} MiB)",
            first as f64 / 1024.0,
            last as f64 / 1024.0,
            args.max_growth_mib
        );
        if growth > args.max_growth_mib {
            println!("FAIL: memory is not flat");
            ok = false;
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
