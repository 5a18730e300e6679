//! The `sms-dispatch` binary: parse the command line, run the command, turn
//! the outcome into an exit code (0 success, 1 runtime failure, 2 usage or
//! configuration error). Everything else lives in the library.
//!
//! The worker runs on one async thread (tokio's current-thread runtime)
//! beside lapin's I/O threads (one per broker connection). A job spends
//! almost none of its time computing and most of it handing work between
//! threads, so a second scheduler thread adds wake-ups and work-stealing:
//! in two alternating pairs of `cargo bench --bench load` runs the
//! multi-threaded runtime used 14 % and 22 % more CPU per job, for 7 % and
//! 14 % fewer jobs/s, and with Twilio at 200 ms and 500 in flight 28 %
//! more CPU per job for the same jobs/s (docs/benchmark.md; this machine's
//! noise between runs is of the same order, so it is a choice by
//! measurement, not a proven gain). One thread serves on the order of 10 000 jobs/s; a deployment
//! that needs more runs more workers, which scale linearly.

use clap::Parser;
use sms_dispatch::{Cli, execute};

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sms-dispatch: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async {
        match execute(cli).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("sms-dispatch: {e}");
                e.exit_code()
            }
        }
    });
    // Exit without dropping the runtime: the reconnect thread of a broker
    // connection the worker abandoned (see `worker::consumer`) would
    // otherwise panic while the runtime shuts down. Everything worth keeping
    // is written.
    std::process::exit(code);
}
