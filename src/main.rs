//! The `sms-dispatch` binary: parse the command line, run the command, turn
//! the outcome into an exit code (0 success, 1 runtime failure, 2 usage or
//! configuration error). Everything else lives in the library.

use clap::Parser;
use sms_dispatch::{Cli, execute};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let code = match execute(cli).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("sms-dispatch: {e}");
            e.exit_code()
        }
    };
    // Exit from inside the runtime: the reconnect thread of a broker
    // connection the worker abandoned (see `worker::consumer`) would
    // otherwise panic while the runtime shuts down. Everything worth keeping
    // is written.
    std::process::exit(code);
}
