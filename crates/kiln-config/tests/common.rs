#![allow(dead_code, clippy::new_without_default)]
use std::path::PathBuf;

use kiln_config::{ConfigError, LoadOptions, MasterConfig};

pub const W: &str = "WORKERS = [worker(\"w1\", password_hash = \"$argon2id$v=19$x\")]\n";

pub struct Dir {
    pub dir: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("secrets")).unwrap();
        Dir { dir }
    }
    pub fn file(&self) -> PathBuf {
        self.dir.path().join("master.star")
    }
    pub fn secret(&self, name: &str, value: &str) {
        std::fs::write(self.dir.path().join("secrets").join(name), value).unwrap();
    }
    pub fn load(&self, src: &str) -> Result<MasterConfig, ConfigError> {
        std::fs::write(self.file(), src).unwrap();
        kiln_config::load_with(
            self.dir.path(),
            &LoadOptions {
                ignore_env: true,
                ..Default::default()
            },
        )
    }
    /// Loads `src`, expecting exactly one error; returns it as `(line:col, message)`.
    pub fn error(&self, src: &str) -> (String, String) {
        let e = self.load(src).expect_err("config should be rejected");
        assert_eq!(e.diagnostics.len(), 1, "expected one error, got: {e}");
        let d = &e.diagnostics[0];
        let loc = d.loc.as_ref().expect("error has a location");
        assert_eq!(loc.file, self.file().display().to_string());
        // the displayed form is file:line:col: error: message
        assert!(
            e.to_string()
                .starts_with(&format!("{}:{}:{}: error: ", loc.file, loc.line, loc.col)),
            "{e}"
        );
        (format!("{}:{}", loc.line, loc.col), d.message.clone())
    }
}
