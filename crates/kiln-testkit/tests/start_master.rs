//! `start_master` against stand-in `kiln` executables (the real one is tested by the bench):
//! ports and the directory are filled in, readiness is HTTP 200, failures carry the output.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_testkit::master::{self, start_master_with};

/// A `kiln` stand-in: `kiln run DIR` serves 200 on /api/v2/builders at the `web_port` of
/// DIR/master.star (404 elsewhere), after `delay` seconds.
fn fake_kiln(dir: &Path, delay: f64) -> PathBuf {
    let bin = dir.join("kiln");
    std::fs::write(
        &bin,
        format!(
            r#"#!/usr/bin/env python3
import http.server, re, sys, time
assert sys.argv[1] == "run", sys.argv
star = open(sys.argv[2] + "/master.star").read()
port = int(re.search(r"web_port = (\d+)", star).group(1))
print("config:", star, flush=True)
time.sleep({delay})
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = 200 if self.path == "/api/v2/builders" else 404
        self.send_response(code); self.end_headers(); self.wfile.write(b'{{"builders": []}}')
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"#
        ),
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[test]
fn starts_on_free_ports_and_waits_for_http_200() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = fake_kiln(tmp.path(), 0.3);
    let dir = tmp.path().join("m");
    let star = "MASTER = master(worker_port = @WORKER_PORT@, web_port = @WEB_PORT@, db_url = \"sqlite:@DIR@/s.sqlite\")\n";
    let m = start_master_with(&bin, &dir, star).unwrap();
    assert_ne!(m.web_port, m.worker_port);
    let written = std::fs::read_to_string(dir.join("master.star")).unwrap();
    let canon = dir.canonicalize().unwrap();
    assert_eq!(
        written,
        format!(
            "MASTER = master(worker_port = {}, web_port = {}, db_url = \"sqlite:{}/s.sqlite\")\n",
            m.worker_port,
            m.web_port,
            canon.display()
        )
    );
    // Ready means the API answered: it was not before the stand-in's delay.
    assert!(m.startup >= Duration::from_millis(300), "{:?}", m.startup);
    assert_eq!(
        master::http_get(m.web_port, "/api/v2/builders").unwrap().0,
        200
    );
    assert_eq!(master::http_get(m.web_port, "/nope").unwrap().0, 404);
    assert!(
        m.log().contains("config:"),
        "the output goes to DIR/kiln.log"
    );
    let pid = m.pid;
    let st = m.stop(Duration::from_secs(5)).unwrap();
    assert!(!st.success(), "stopped by a signal");
    assert!(
        !Path::new(&format!("/proc/{pid}/cmdline")).exists()
            || std::fs::read(format!("/proc/{pid}/cmdline"))
                .unwrap()
                .is_empty()
    );
}

#[test]
fn a_master_that_exits_early_is_an_error_with_its_output() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("kiln");
    std::fs::write(
        &bin,
        "#!/bin/sh\necho 'master.star:1: bad config' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = start_master_with(&bin, &tmp.path().join("m"), "")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("exited") && err.contains("bad config"),
        "{err}"
    );
}

#[test]
fn a_missing_binary_says_how_to_build_it() {
    let tmp = tempfile::tempdir().unwrap();
    let err = start_master_with(&tmp.path().join("kiln"), tmp.path(), "")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cargo build -p kiln") && err.contains("KILN_BIN"),
        "{err}"
    );
}
