//! The `kiln` command; everything lives in [`kiln::cli`].

/// mimalloc keeps a master with thousands of idle worker connections close to its live
/// heap; glibc's allocator held about twice that (measured by bench W3).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let mut args = std::env::args_os().skip(1);
    if args
        .next()
        .is_some_and(|a| a == kiln_master::config_proc::EVALUATE_ARG)
    {
        let Some(file) = args.next() else {
            return std::process::ExitCode::FAILURE;
        };
        return kiln_master::config_proc::child_main(std::path::Path::new(&file));
    }
    // The master (`kiln run`, reconfig) evaluates master.star in a child: `kiln` itself.
    kiln_master::config_proc::use_child_process();
    kiln::cli::main()
}

/// mimalloc (3.x, the -sys crate's default) asks for transparent huge pages on its 1 GiB
/// arenas (`madvise(MADV_HUGEPAGE)`), so the first touched 2 MiB of heap became resident at
/// once (2 of an idle master's 7 MB anonymous memory). Its option is read when an arena is
/// made, and the first one is made by the first allocation, which comes before `main`: so
/// this runs as a constructor (after mimalloc's own, before Rust's runtime), and turns THP
/// off for the process as mimalloc does when the option is off at its start.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static NO_TRANSPARENT_HUGE_PAGES: extern "C" fn() = no_transparent_huge_pages;

#[cfg(target_os = "linux")]
extern "C" fn no_transparent_huge_pages() {
    // mimalloc 3's `mi_option_allow_thp` (the -sys crate does not name it).
    const ALLOW_THP: libmimalloc_sys::mi_option_t = 43;
    // SAFETY: sets an allocator option and a process attribute; neither touches memory.
    unsafe {
        libmimalloc_sys::mi_option_set(ALLOW_THP, 0);
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
