//! The `kiln` command; everything lives in [`kiln_master::cli`].

fn main() -> std::process::ExitCode {
    kiln_master::cli::main()
}
