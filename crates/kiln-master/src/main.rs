//! The `kiln` command; everything lives in [`kiln_master::cli`].

/// mimalloc keeps a master with thousands of idle worker connections close to its live
/// heap; glibc's allocator held about twice that (measured by bench W3).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    kiln_master::cli::main()
}
