//! File-system commands: `mkdir`, `stat`, `glob`, `listdir`, `rmfile` (§8.7, §8.10–8.13).
//!
//! Each one reports like Buildbot's worker: its result item (if any), `rc`
//! (0, or the `errno` of the first failure, with a header
//! `<command>: <strerror>: <path>`), then `elapsed`. An error that has no
//! errno (Python would raise something other than `OSError`) fails the
//! command instead.

use std::io;
use std::path::Path;

use kiln_proto::args::{PathArgs, PathsArgs};
use kiln_proto::update::UpdateItem;

use super::CommandCtx;

/// `create_dir_all`, giving every directory it creates to the build user (if any),
/// so builds that run as that user can write where the master asked for directories.
pub(crate) fn create_dirs_for_builds(
    dir: &Path,
    run_as: Option<&super::process::RunAs>,
) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut p = Some(dir);
    while let Some(d) = p.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d.to_path_buf());
        p = d.parent();
    }
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    if let Some(user) = run_as {
        for d in missing.iter().rev() {
            std::os::unix::fs::chown(d, Some(user.uid), Some(user.gid))?;
        }
    }
    #[cfg(not(unix))]
    let _ = (run_as, missing);
    Ok(())
}

pub async fn mkdir(ctx: &mut CommandCtx, args: PathsArgs) -> Result<(), String> {
    let paths = args.paths;
    let run_as = ctx.policy.run_as.clone();
    let failed = blocking(move || {
        for path in paths {
            if Path::new(&path).is_dir() {
                continue;
            }
            if let Err(e) = create_dirs_for_builds(Path::new(&path), run_as.as_ref()) {
                return Some((path, e));
            }
        }
        None
    })
    .await?;
    let result = match failed {
        None => {
            ctx.push(UpdateItem::Rc(0)).await;
            Ok(())
        }
        Some((path, e)) => report_error(ctx, "mkdir", &path, &e).await,
    };
    finish(ctx, result).await
}

pub async fn stat(ctx: &mut CommandCtx, args: PathArgs) -> Result<(), String> {
    let path = args.path.clone();
    let result = match blocking(move || std::fs::metadata(&path).map(|m| stat_tuple(&m))).await? {
        Ok(tuple) => {
            ctx.push(UpdateItem::Stat(tuple)).await;
            ctx.push(UpdateItem::Rc(0)).await;
            Ok(())
        }
        Err(e) => report_error(ctx, "stat", &args.path, &e).await,
    };
    finish(ctx, result).await
}

pub async fn glob(ctx: &mut CommandCtx, args: PathArgs) -> Result<(), String> {
    // Python's glob never raises: unreadable directories just match nothing.
    let files = blocking(move || pyglob::glob(&args.path)).await?;
    ctx.push(UpdateItem::Files(files)).await;
    ctx.push(UpdateItem::Rc(0)).await;
    finish(ctx, Ok(())).await
}

pub async fn listdir(ctx: &mut CommandCtx, args: PathArgs) -> Result<(), String> {
    let path = args.path.clone();
    let listed = blocking(move || -> io::Result<Vec<String>> {
        std::fs::read_dir(&path)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect()
    })
    .await?;
    let result = match listed {
        Ok(names) => {
            ctx.push(UpdateItem::Files(names)).await;
            ctx.push(UpdateItem::Rc(0)).await;
            Ok(())
        }
        Err(e) => report_error(ctx, "listdir", &args.path, &e).await,
    };
    finish(ctx, result).await
}

pub async fn rmfile(ctx: &mut CommandCtx, args: PathArgs) -> Result<(), String> {
    let path = args.path.clone();
    let result = match blocking(move || std::fs::remove_file(&path)).await? {
        Ok(()) => {
            ctx.push(UpdateItem::Rc(0)).await;
            Ok(())
        }
        Err(e) => report_error(ctx, "rmfile", &args.path, &e).await,
    };
    finish(ctx, result).await
}

/// Runs file-system work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("worker thread failed: {e}"))
}

/// `header "<cmd>: <strerror>: <path>"` and `rc errno`, as Buildbot's fs commands report an `OSError`.
async fn report_error(
    ctx: &mut CommandCtx,
    cmd: &str,
    path: &str,
    e: &io::Error,
) -> Result<(), String> {
    match os_error(e) {
        Some((errno, strerror)) => {
            ctx.header(&format!("{cmd}: {strerror}: {path}")).await;
            ctx.push(UpdateItem::Rc(errno)).await;
            Ok(())
        }
        // Not an OS error (e.g. a NUL byte in the path): Python raises, the command fails.
        None => Err(format!("{cmd}: {e}: {path}")),
    }
}

/// Every command that ran to its end reports `elapsed` last, also when it failed.
async fn finish(ctx: &mut CommandCtx, result: Result<(), String>) -> Result<(), String> {
    let elapsed = ctx.elapsed();
    ctx.push(UpdateItem::Elapsed(elapsed)).await;
    result
}

/// `(errno, strerror)` as Python's `OSError` carries them, if `e` came from the OS.
pub(crate) fn os_error(e: &io::Error) -> Option<(i64, String)> {
    let code = e.raw_os_error()?;
    Some((errno_of(code), strerror(code)))
}

/// `str(OSError)` for an error about `path`: `[Errno 2] No such file or directory: '/x'`.
pub(crate) fn python_oserror(e: &io::Error, path: &Path) -> String {
    match os_error(e) {
        Some((errno, text)) => format!("[Errno {errno}] {text}: '{}'", path.display()),
        None => format!("{e}: '{}'", path.display()),
    }
}

/// The C library's text for an OS error code (what Python puts in `strerror`).
fn strerror(code: i32) -> String {
    // std renders `<strerror> (os error N)`; keep the first part.
    let full = io::Error::from_raw_os_error(code).to_string();
    let text = match full.rfind(" (os error ") {
        Some(i) => full[..i].to_owned(),
        None => full,
    };
    if cfg!(windows) {
        text.trim_end().trim_end_matches('.').to_owned()
    } else {
        text
    }
}

#[cfg(not(windows))]
fn errno_of(code: i32) -> i64 {
    i64::from(code)
}

/// Python maps a Windows error code to an errno (`winerror_to_errno`); the common ones.
#[cfg(windows)]
fn errno_of(code: i32) -> i64 {
    match code {
        2 | 3 | 15 | 53 | 67 | 161 | 206 => 2,   // ENOENT
        5 | 19 | 32 | 33 | 65 | 86 | 1314 => 13, // EACCES
        80 | 183 => 17,                          // EEXIST
        145 => 41,                               // ENOTEMPTY
        267 => 20,                               // ENOTDIR
        8 | 14 => 12,                            // ENOMEM
        39 | 112 => 28,                          // ENOSPC
        17 => 18,                                // EXDEV
        6 => 9,                                  // EBADF
        10000..=11999 => i64::from(code),        // winsock codes pass through
        _ => 22,                                 // EINVAL
    }
}

/// `tuple(os.stat(path))`: mode, ino, dev, nlink, uid, gid, size, atime, mtime, ctime (whole seconds).
#[cfg(unix)]
fn stat_tuple(m: &std::fs::Metadata) -> Vec<i64> {
    use std::os::unix::fs::MetadataExt;
    let big = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    vec![
        i64::from(m.mode()),
        big(m.ino()),
        big(m.dev()),
        big(m.nlink()),
        i64::from(m.uid()),
        i64::from(m.gid()),
        big(m.size()),
        m.atime(),
        m.mtime(),
        m.ctime(),
    ]
}

/// Windows: the mode Python derives from the file attributes; no inode, device or owner.
#[cfg(not(unix))]
fn stat_tuple(m: &std::fs::Metadata) -> Vec<i64> {
    use std::time::{SystemTime, UNIX_EPOCH};
    let secs = |t: io::Result<SystemTime>| -> i64 {
        match t {
            Ok(t) => match t.duration_since(UNIX_EPOCH) {
                Ok(d) => d.as_secs() as i64,
                Err(e) => -(e.duration().as_secs_f64().ceil() as i64),
            },
            Err(_) => 0,
        }
    };
    let mut mode: i64 = if m.is_dir() {
        0o040000 | 0o111
    } else {
        0o100000
    };
    mode |= if m.permissions().readonly() {
        0o444
    } else {
        0o666
    };
    let size = i64::try_from(m.len()).unwrap_or(i64::MAX);
    vec![
        mode,
        0,
        0,
        0,
        0,
        0,
        size,
        secs(m.accessed()),
        secs(m.modified()),
        secs(m.created()),
    ]
}

/// Python's `glob.glob(pattern, recursive=True)` (3.11): `*`, `?`, `[…]` per path
/// component, `**` alone in a component for any depth of directories, names
/// starting with `.` only matched by a pattern starting with `.`, a trailing
/// separator for directories only. Results come in directory order.
pub(crate) mod pyglob {
    use std::path::Path;

    #[cfg(windows)]
    const SEP: char = '\\';
    #[cfg(not(windows))]
    const SEP: char = '/';

    fn is_sep(c: char) -> bool {
        c == '/' || (cfg!(windows) && c == '\\')
    }

    pub fn glob(pattern: &str) -> Vec<String> {
        let mut out = Vec::new();
        iglob(pattern, false, &mut out);
        // `glob` drops the empty first match of a relative `**…` pattern.
        if (pattern.is_empty() || pattern.starts_with("**"))
            && out.first().is_some_and(String::is_empty)
        {
            out.remove(0);
        }
        out
    }

    fn iglob(pathname: &str, dironly: bool, out: &mut Vec<String>) {
        let (dirname, basename) = split(pathname);
        if !has_magic(pathname) {
            let found = if basename.is_empty() {
                is_dir(dirname)
            } else {
                lexists(pathname)
            };
            if found {
                out.push(pathname.to_owned());
            }
            return;
        }
        if dirname.is_empty() {
            if basename == "**" {
                glob2("", dironly, out);
            } else {
                glob1("", basename, dironly, out);
            }
            return;
        }
        let dirs = if dirname != pathname && has_magic(dirname) {
            let mut dirs = Vec::new();
            iglob(dirname, true, &mut dirs);
            dirs
        } else {
            vec![dirname.to_owned()]
        };
        for dir in dirs {
            let mut names = Vec::new();
            if !has_magic(basename) {
                glob0(&dir, basename, &mut names);
            } else if basename == "**" {
                glob2(&dir, dironly, &mut names);
            } else {
                glob1(&dir, basename, dironly, &mut names);
            }
            out.extend(names.iter().map(|n| join(&dir, n)));
        }
    }

    fn glob0(dirname: &str, basename: &str, out: &mut Vec<String>) {
        let found = if basename.is_empty() {
            is_dir(dirname)
        } else {
            lexists(&join(dirname, basename))
        };
        if found {
            out.push(basename.to_owned());
        }
    }

    fn glob1(dirname: &str, pattern: &str, dironly: bool, out: &mut Vec<String>) {
        let matcher = Pattern::new(pattern);
        let hidden_ok = pattern.starts_with('.');
        out.extend(
            listdir(dirname, dironly)
                .into_iter()
                .filter(|n| (hidden_ok || !n.starts_with('.')) && matcher.matches(n)),
        );
    }

    fn glob2(dirname: &str, dironly: bool, out: &mut Vec<String>) {
        out.push(String::new());
        let mut ancestors = Vec::new();
        rlistdir(dirname, dironly, &mut ancestors, out);
    }

    /// Every non-hidden name below `dirname`, relative to it, parents first.
    /// Symlinked directories are followed, but never into one of their own ancestors.
    fn rlistdir(dirname: &str, dironly: bool, ancestors: &mut Vec<DirId>, out: &mut Vec<String>) {
        let pushed = match dir_id(dirname) {
            Some(id) if ancestors.contains(&id) => return,
            Some(id) => {
                ancestors.push(id);
                true
            }
            None => false,
        };
        for name in listdir(dirname, dironly) {
            if name.starts_with('.') {
                continue;
            }
            out.push(name.clone());
            let path = if dirname.is_empty() {
                name.clone()
            } else {
                join(dirname, &name)
            };
            let mut below = Vec::new();
            rlistdir(&path, dironly, ancestors, &mut below);
            out.extend(below.iter().map(|b| join(&name, b)));
        }
        if pushed {
            ancestors.pop();
        }
    }

    #[cfg(unix)]
    type DirId = (u64, u64);
    #[cfg(not(unix))]
    type DirId = std::path::PathBuf;

    #[cfg(unix)]
    fn dir_id(dirname: &str) -> Option<DirId> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(if dirname.is_empty() { "." } else { dirname }).ok()?;
        m.is_dir().then(|| (m.dev(), m.ino()))
    }

    #[cfg(not(unix))]
    fn dir_id(dirname: &str) -> Option<DirId> {
        std::fs::canonicalize(if dirname.is_empty() { "." } else { dirname }).ok()
    }

    /// Entry names of a directory (only directories, following symlinks, if `dironly`);
    /// nothing if it cannot be read.
    fn listdir(dirname: &str, dironly: bool) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(if dirname.is_empty() { "." } else { dirname }) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| {
                !dironly
                    || match e.file_type() {
                        Ok(t) if t.is_symlink() => {
                            std::fs::metadata(e.path()).is_ok_and(|m| m.is_dir())
                        }
                        Ok(t) => t.is_dir(),
                        Err(_) => false,
                    }
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn lexists(path: &str) -> bool {
        std::fs::symlink_metadata(path).is_ok()
    }

    fn is_dir(path: &str) -> bool {
        Path::new(if path.is_empty() { "." } else { path }).is_dir()
    }

    fn has_magic(s: &str) -> bool {
        s.contains(['*', '?', '['])
    }

    /// The length of a drive prefix (`C:`) on Windows.
    fn drive_len(p: &str) -> usize {
        let b = p.as_bytes();
        if cfg!(windows) && b.len() >= 2 && b[1] == b':' && b[0].is_ascii_alphabetic() {
            2
        } else {
            0
        }
    }

    /// `os.path.split`: the head loses its trailing separators unless it is only separators.
    fn split(p: &str) -> (&str, &str) {
        let drive = drive_len(p);
        let rest = &p[drive..];
        let cut = rest.rfind(is_sep).map_or(0, |i| i + 1);
        let (head, tail) = (&rest[..cut], &rest[cut..]);
        let trimmed = head.trim_end_matches(is_sep);
        let head_len = if trimmed.is_empty() {
            head.len()
        } else {
            trimmed.len()
        };
        (&p[..drive + head_len], tail)
    }

    /// `os.path.join(a, b)`.
    fn join(a: &str, b: &str) -> String {
        if b.starts_with(is_sep) || drive_len(b) > 0 {
            return b.to_owned();
        }
        if a.is_empty() || a.ends_with(is_sep) || (drive_len(a) == a.len() && !a.is_empty()) {
            format!("{a}{b}")
        } else {
            format!("{a}{SEP}{b}")
        }
    }

    /// One `fnmatch` pattern, translated the way Python's `fnmatch.translate` does.
    #[derive(Debug)]
    pub(crate) struct Pattern {
        tokens: Vec<Token>,
    }

    #[derive(Debug)]
    enum Token {
        Star,
        Any,
        Lit(char),
        /// `[…]`: inclusive ranges; an empty set never matches, an empty negated set matches anything.
        Class {
            negated: bool,
            ranges: Vec<(char, char)>,
        },
    }

    impl Pattern {
        pub(crate) fn new(pattern: &str) -> Pattern {
            let pat: Vec<char> = normcase(pattern).chars().collect();
            let n = pat.len();
            let mut tokens = Vec::new();
            let mut i = 0;
            while i < n {
                let c = pat[i];
                i += 1;
                match c {
                    '*' => {
                        if !matches!(tokens.last(), Some(Token::Star)) {
                            tokens.push(Token::Star);
                        }
                    }
                    '?' => tokens.push(Token::Any),
                    '[' => {
                        let mut j = i;
                        if j < n && pat[j] == '!' {
                            j += 1;
                        }
                        if j < n && pat[j] == ']' {
                            j += 1;
                        }
                        while j < n && pat[j] != ']' {
                            j += 1;
                        }
                        if j >= n {
                            tokens.push(Token::Lit('['));
                            continue;
                        }
                        let mut body = &pat[i..j];
                        i = j + 1;
                        let negated = body.first() == Some(&'!');
                        if negated {
                            body = &body[1..];
                        }
                        let mut ranges = Vec::new();
                        let mut k = 0;
                        while k < body.len() {
                            if k + 2 < body.len() && body[k + 1] == '-' {
                                // An inverted range is dropped: it matches nothing.
                                if body[k] <= body[k + 2] {
                                    ranges.push((body[k], body[k + 2]));
                                }
                                k += 3;
                            } else {
                                ranges.push((body[k], body[k]));
                                k += 1;
                            }
                        }
                        tokens.push(Token::Class { negated, ranges });
                    }
                    c => tokens.push(Token::Lit(c)),
                }
            }
            Pattern { tokens }
        }

        pub(crate) fn matches(&self, name: &str) -> bool {
            let name: Vec<char> = normcase(name).chars().collect();
            matches_at(&self.tokens, &name)
        }
    }

    fn matches_at(tokens: &[Token], name: &[char]) -> bool {
        // Classic wildcard matching: remember the last `*` and retry one character further.
        let (mut t, mut n) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while n < name.len() {
            match tokens.get(t) {
                Some(Token::Star) => {
                    star = Some((t, n));
                    t += 1;
                    continue;
                }
                Some(tok) if one(tok, name[n]) => {
                    t += 1;
                    n += 1;
                    continue;
                }
                _ => {}
            }
            match star {
                Some((st, sn)) => {
                    t = st + 1;
                    n = sn + 1;
                    star = Some((st, sn + 1));
                }
                None => return false,
            }
        }
        tokens[t..].iter().all(|tok| matches!(tok, Token::Star))
    }

    fn one(tok: &Token, c: char) -> bool {
        match tok {
            Token::Any => true,
            Token::Lit(l) => *l == c,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negated
            }
            Token::Star => unreachable!("handled by the caller"),
        }
    }

    /// `os.path.normcase`: nothing on POSIX; lower case and backslashes on Windows.
    fn normcase(s: &str) -> String {
        if cfg!(windows) {
            s.to_lowercase().replace('/', "\\")
        } else {
            s.to_owned()
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn fnmatch_like_python() {
            let m = |p: &str, n: &str| Pattern::new(p).matches(n);
            assert!(m("*.txt", "a.txt"));
            assert!(!m("*.txt", "a.txt.bak"));
            assert!(m("a?c", "abc"));
            assert!(m("[a-c]x", "bx"));
            assert!(!m("[!a-c]x", "bx"));
            assert!(m("[!a-c]x", "dx"));
            assert!(m("[]]", "]"));
            assert!(m("[!]]", "a"));
            assert!(m("[", "["), "an unclosed bracket is literal");
            assert!(m("[a-]", "-"));
            assert!(!m("[z-a]", "m"), "an inverted range matches nothing");
            assert!(m("[!z-a]", "m"), "a negated empty set matches anything");
            assert!(m("a*b*c", "aXXbYYc"));
            assert!(!m("a*b*c", "aXXbYY"));
            assert!(m("*", ""));
        }

        #[test]
        fn split_and_join_like_os_path() {
            if cfg!(windows) {
                return;
            }
            assert_eq!(split("/a/b/c"), ("/a/b", "c"));
            assert_eq!(split("/a/b/"), ("/a/b", ""));
            assert_eq!(split("/a"), ("/", "a"));
            assert_eq!(split("a"), ("", "a"));
            assert_eq!(split("//a"), ("//", "a"));
            assert_eq!(join("/a", ""), "/a/");
            assert_eq!(join("/a/", "b"), "/a/b");
            assert_eq!(join("", "b"), "b");
            assert_eq!(join("/a", "/b"), "/b");
        }
    }
}
