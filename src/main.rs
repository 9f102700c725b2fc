//! The `kastell` command line: parse the arguments, run the command (see `cli`).

mod cli;

fn main() -> anyhow::Result<()> {
    cli::run(clap::Parser::parse())
}
