//! `kiln create-master` and `kiln checkconfig`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};

/// The commented `master.star` that `create-master` writes (`{{DIR}}`, `{{DB_URL}}` filled in).
pub const MASTER_TEMPLATE: &str = include_str!("../../templates/master.star");

/// The secret holding the local worker's password.
pub const LOCAL_WORKER_SECRET: &str = "local-worker";

/// `DIR` made absolute (without resolving symlinks or requiring it to exist).
pub fn absolute(dir: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(dir).with_context(|| format!("cannot make {} absolute", dir.display()))
}

/// `sqlite:///DIR/state.sqlite`: an absolute path, so the master finds it from any cwd.
pub fn default_db_url(dir: &Path) -> String {
    format!("sqlite://{}/state.sqlite", dir.display())
}

/// A fresh random password (32 hex digits from the OS's random source).
pub fn random_password() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("cannot read /dev/urandom for a worker password")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `DIR/secrets/NAME` (dir 0700, file 0600) unless it exists; returns its value.
pub fn ensure_secret(dir: &Path, name: &str) -> anyhow::Result<String> {
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets)
        .with_context(|| format!("cannot create {}", secrets.display()))?;
    set_mode(&secrets, 0o700)?;
    let path = secrets.join(name);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        return Ok(existing.trim_end_matches(['\n', '\r']).to_owned());
    }
    let value = random_password()?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(f, "{value}").with_context(|| format!("cannot write {}", path.display()))?;
    Ok(value)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot chmod {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// Fills `{{KEY}}` placeholders.
pub fn render(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    out
}

/// A Starlark string literal's body: `\` and `"` escaped.
pub fn star_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `kiln create-master DIR [--db URL]`.
pub fn create_master(basedir: &Path, db: Option<&str>) -> anyhow::Result<ExitCode> {
    let dir = absolute(basedir)?;
    let config = dir.join(kiln_config::DEFAULT_FILE);
    if config.exists() {
        bail!(
            "{} already exists; edit it, or choose a new directory",
            config.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let db_url = db.map_or_else(|| default_db_url(&dir), str::to_owned);
    ensure_secret(&dir, LOCAL_WORKER_SECRET)?;
    let text = render(
        MASTER_TEMPLATE,
        &[
            ("DIR", &dir.display().to_string()),
            ("DB_URL", &star_escape(&db_url)),
        ],
    );
    std::fs::write(&config, text).with_context(|| format!("cannot write {}", config.display()))?;
    // Check what we wrote, so a broken template is caught here and not at `start`.
    if let Err(e) = kiln_config::check(&config) {
        bail!(
            "the new {} does not load (a bug in kiln):\n{e}",
            config.display()
        );
    }
    println!("Created a master in {}", dir.display());
    println!("  config:  {}", config.display());
    println!(
        "  secret:  {} (password of worker \"local\")",
        dir.join("secrets").join(LOCAL_WORKER_SECRET).display()
    );
    println!("  db:      {db_url}");
    println!("Next: kiln start {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// `kiln checkconfig [DIR|FILE]`: exit 0 with a summary, 1 with the errors on stderr.
pub fn checkconfig(path: &Path) -> ExitCode {
    match kiln_config::check(path) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!(
                "{}: config is broken ({} problem{}); fix it and run `kiln checkconfig` again",
                kiln_config::config_file(path).display(),
                e.diagnostics.len(),
                if e.diagnostics.len() == 1 { "" } else { "s" }
            );
            ExitCode::FAILURE
        }
    }
}
