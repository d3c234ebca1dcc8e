//! `kiln-worker`: see `kiln_worker::cli`.

fn main() -> std::process::ExitCode {
    kiln_worker::cli::main()
}
