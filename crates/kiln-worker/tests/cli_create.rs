//! `kiln-worker create-worker`: layout, parsing, errors, --passwd-file, --from-buildbot, --force.
#![cfg(unix)]

mod cli_support;

use std::os::unix::fs::PermissionsExt as _;

use cli_support::*;
use kiln_worker::config::WorkerConfig;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn creates_the_layout_with_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("deep/parents/worker");
    let out = ok(run(&[
        "create-worker",
        "--allow-root",
        dir.to_str().unwrap(),
        "buildbot.example.org",
        "w1",
        "s3cret",
    ]));

    let toml_path = dir.join("kiln-worker.toml");
    assert_eq!(mode(&toml_path), 0o600, "the config holds the password");
    let text = std::fs::read_to_string(&toml_path).unwrap();
    assert!(text.starts_with('#'), "commented header:\n{text}");
    assert!(
        text.contains("# Worker name, as configured on the master.\nname = \"w1\""),
        "{text}"
    );

    let config = WorkerConfig::load(&dir).unwrap();
    assert_eq!(config.master_host, "buildbot.example.org");
    assert_eq!(config.master_port, 9989, "default port");
    assert_eq!(config.name, "w1");
    assert_eq!(config.password, "s3cret");
    assert_eq!(config.protocol, "msgpack_experimental_v7");
    assert!(config.allow_root);
    assert_eq!(config.basedir, dir);

    assert_eq!(
        std::fs::read_to_string(dir.join("info/admin")).unwrap(),
        "Your Name Here <admin@youraddress.invalid>\n"
    );
    let host = std::fs::read_to_string(dir.join("info/host")).unwrap();
    let uname = nix::sys::utsname::uname().unwrap();
    assert!(
        host.contains(&*uname.release().to_string_lossy()),
        "kernel release in info/host: {host}"
    );
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    assert!(
        host.contains(&format!("; {cpus} x ")),
        "cpu count in info/host: {host}"
    );
    assert!(host.contains("RAM"), "{host}");
    assert!(
        !host.contains("Please put a description"),
        "prefilled, not Buildbot's placeholder"
    );

    // Next steps: edit info/admin, start, and the crontab line with absolute paths.
    assert!(out.contains("info/admin"), "{out}");
    assert!(
        out.contains(&format!("{} start {}", BIN_ABS.as_str(), dir.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "@reboot {} restart {}",
            BIN_ABS.as_str(),
            dir.display()
        )),
        "{out}"
    );
}

static BIN_ABS: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| std::fs::canonicalize(BIN).unwrap().display().to_string());

#[test]
fn keeps_existing_info_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("w");
    std::fs::create_dir_all(dir.join("info")).unwrap();
    std::fs::write(dir.join("info/host"), "my own words\n").unwrap();
    create(&dir, &[]);
    assert_eq!(
        std::fs::read_to_string(dir.join("info/host")).unwrap(),
        "my own words\n"
    );
    assert!(dir.join("info/admin").exists());
}

#[test]
fn master_forms() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, (master, host, port)) in [
        ("[::1]:9000", "::1", 9000),
        ("[fe80::1]", "fe80::1", 9989),
        ("m.example:9020", "m.example", 9020),
        ("10.1.2.3", "10.1.2.3", 9989),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tmp.path().join(format!("w{i}"));
        ok(run(&[
            "create-worker",
            "-q",
            "--allow-root",
            dir.to_str().unwrap(),
            master,
            "w",
            "pw",
        ]));
        let c = WorkerConfig::load(&dir).unwrap();
        assert_eq!(
            (c.master_host.as_str(), c.master_port),
            (host, port),
            "{master}"
        );
    }
}

#[test]
fn bad_master_or_name_is_refused_and_nothing_is_created() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("w");
    let d = dir.to_str().unwrap();
    for (master, name, expect) in [
        ("http://buildbot.example.org:9989", "w", "is a URL"),
        ("https://buildbot.example.org", "w", "is a URL"),
        ("wss://m.example", "w", "--use-tls"),
        ("::1", "w", "brackets"),
        ("m.example:0", "w", "1 to 65535"),
        ("m.example:http", "w", "not a number"),
        ("m.example", "a:b", "contains ':'"),
    ] {
        let o = run(&["create-worker", d, master, name, "pw"]);
        assert_eq!(o.status.code(), Some(1), "{master} {name}: {}", all(&o));
        assert!(
            stderr(&o).contains(expect),
            "{master} {name}: want {expect:?} in {}",
            stderr(&o)
        );
        assert!(!dir.exists(), "{master} {name}: nothing may be created");
    }
    // Missing arguments say what is missing.
    let o = run(&["create-worker", d, "m.example", "w"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--passwd-file"), "{}", stderr(&o));
}

#[test]
fn password_file() {
    let tmp = tempfile::tempdir().unwrap();
    let pwfile = tmp.path().join("pw.txt");
    std::fs::write(&pwfile, "from-file\nignored\n").unwrap();
    let dir = tmp.path().join("w");
    let d = dir.to_str().unwrap();
    let p = pwfile.to_str().unwrap();

    let o = run(&[
        "create-worker",
        "--passwd-file",
        p,
        d,
        "m.example",
        "w",
        "pw",
    ]);
    assert_eq!(o.status.code(), Some(1), "both forms at once");
    assert!(stderr(&o).contains("not both"), "{}", stderr(&o));

    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "\n").unwrap();
    let o = run(&[
        "create-worker",
        "--passwd-file",
        empty.to_str().unwrap(),
        d,
        "m.example",
        "w",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("empty"), "{}", stderr(&o));

    let o = run(&[
        "create-worker",
        "--passwd-file",
        "/nonexistent/pw",
        d,
        "m.example",
        "w",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/nonexistent/pw"), "{}", stderr(&o));

    ok(run(&[
        "create-worker",
        "-q",
        "--allow-root",
        "--passwd-file",
        p,
        d,
        "m.example",
        "w",
    ]));
    let text = std::fs::read_to_string(dir.join("kiln-worker.toml")).unwrap();
    assert!(
        !text.contains("from-file"),
        "the password stays out of the config"
    );
    let c = WorkerConfig::load(&dir).unwrap();
    assert_eq!(c.password_file.as_deref(), Some(pwfile.as_path()));
    assert_eq!(c.resolved_password().unwrap(), "from-file");
}

/// A buildbot.tac as buildbot-worker 4.3.0's create-worker writes it (spec §10.1).
const TAC: &str = r#"import os

from buildbot_worker.bot import Worker
from twisted.application import service

basedir = '/home/buildbot/buildarea'
rotateLength = 10000000
maxRotatedFiles = 10

# if this is a relocatable tac file, get the directory containing the TAC
if basedir == '.':
    import os.path
    basedir = os.path.abspath(os.path.dirname(__file__))

# note: this line is matched against to check that this is a worker
# directory; do not edit it.
application = service.Application('buildbot-worker')

from twisted.python.logfile import LogFile
from twisted.python.log import ILogObserver, FileLogObserver
logfile = LogFile.fromFullPath(
    os.path.join(basedir, "twistd.log"), rotateLength=rotateLength,
    maxRotatedFiles=maxRotatedFiles)
application.setComponent(ILogObserver, FileLogObserver(logfile).emit)

buildmaster_host = 'buildbot.python.org'
port = 9020
connection_string = None
workername = 'ware-debian-x86'
passwd = 'p@ss"word'
keepalive = 600
umask = 0o22
maxdelay = 300
numcpus = None
allow_shutdown = None
maxretries = None
use_tls = 0
delete_leftover_dirs = 1
proxy_connection_string = None
protocol = 'pb'

s = Worker(buildmaster_host, port, workername, passwd, basedir,
           keepalive, umask=umask, maxdelay=maxdelay,
           numcpus=numcpus, allow_shutdown=allow_shutdown,
           maxRetries=maxretries, protocol=protocol, useTls=use_tls,
           delete_leftover_dirs=delete_leftover_dirs,
           connection_string=connection_string,
           proxy_connection_string=proxy_connection_string)
s.setServiceParent(application)
"#;

#[test]
fn imports_a_buildbot_worker_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let old = tmp.path().join("buildarea");
    std::fs::create_dir_all(old.join("info")).unwrap();
    std::fs::write(old.join("buildbot.tac"), TAC).unwrap();
    std::fs::write(old.join("info/admin"), "Jane Doe <jane@example.org>\n").unwrap();
    std::fs::write(old.join("info/host"), "Debian 12 VM on a NUC\n").unwrap();
    std::fs::write(old.join("info/access_uri"), "ssh://ware@example.org\n").unwrap();

    let dir = tmp.path().join("kiln");
    let o = run(&[
        "create-worker",
        "--allow-root",
        "--from-buildbot",
        old.to_str().unwrap(),
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", all(&o));
    assert!(
        stderr(&o).contains("\"pb\""),
        "warns that the old protocol was PB: {}",
        stderr(&o)
    );

    let c = WorkerConfig::load(&dir).unwrap();
    assert_eq!(
        (c.master_host.as_str(), c.master_port),
        ("buildbot.python.org", 9020)
    );
    assert_eq!(c.name, "ware-debian-x86");
    assert_eq!(c.password, "p@ss\"word");
    assert_eq!(c.keepalive, 600);
    assert_eq!(c.umask, Some(0o22));
    assert_eq!(c.maxretries, None);
    assert!(!c.use_tls);
    assert!(c.delete_leftover_dirs);
    assert_eq!(c.protocol, "msgpack_experimental_v7");
    assert_eq!(c.log_size, 10_000_000);
    assert_eq!(
        std::fs::read_to_string(dir.join("info/admin")).unwrap(),
        "Jane Doe <jane@example.org>\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("info/host")).unwrap(),
        "Debian 12 VM on a NUC\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("info/access_uri")).unwrap(),
        "ssh://ware@example.org\n"
    );

    // Positional arguments override the imported values; connection_string works too.
    let tac2 = TAC.replace(
        "connection_string = None",
        "connection_string = 'tls:host=m2.example:port=9443'",
    );
    std::fs::write(old.join("buildbot.tac"), tac2).unwrap();
    let dir2 = tmp.path().join("kiln2");
    ok(run(&[
        "create-worker",
        "-q",
        "--allow-root",
        "--from-buildbot",
        old.to_str().unwrap(),
        dir2.to_str().unwrap(),
        "[::1]:7000",
        "renamed",
    ]));
    let c = WorkerConfig::load(&dir2).unwrap();
    assert_eq!(
        (c.master_host.as_str(), c.master_port, c.name.as_str()),
        ("::1", 7000, "renamed")
    );
    assert!(c.use_tls, "tls: endpoint");
    assert_eq!(c.password, "p@ss\"word");

    // Not a buildbot-worker directory.
    let o = run(&[
        "create-worker",
        "--from-buildbot",
        tmp.path().to_str().unwrap(),
        tmp.path().join("x").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("buildbot.tac"), "{}", stderr(&o));
}

#[test]
fn refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("w");
    create(&dir, &[]);
    std::fs::write(dir.join("info/admin"), "Edited <me@example.org>\n").unwrap();
    let before = std::fs::read_to_string(dir.join("kiln-worker.toml")).unwrap();

    let o = run(&[
        "create-worker",
        "--allow-root",
        dir.to_str().unwrap(),
        "other.example",
        "w2",
        "pw2",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(dir.join("kiln-worker.toml")).unwrap(),
        before
    );

    ok(run(&[
        "create-worker",
        "-q",
        "--force",
        "--allow-root",
        "--umask",
        "027",
        dir.to_str().unwrap(),
        "other.example",
        "w2",
        "pw2",
    ]));
    let c = WorkerConfig::load(&dir).unwrap();
    assert_eq!(
        (c.master_host.as_str(), c.name.as_str(), c.umask),
        ("other.example", "w2", Some(0o27))
    );
    assert_eq!(mode(&dir.join("kiln-worker.toml")), 0o600);
    assert_eq!(
        std::fs::read_to_string(dir.join("info/admin")).unwrap(),
        "Edited <me@example.org>\n",
        "info/ is kept"
    );
}

#[test]
fn options_reach_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
    let dir = tmp.path().join("w");
    ok(run(&[
        "create-worker",
        "-q",
        "--allow-root",
        "--use-tls",
        "--ca-file",
        ca.to_str().unwrap(),
        "--keepalive",
        "45",
        "--maxretries",
        "7",
        "--delete-leftover-dirs",
        "--sandbox",
        "bwrap",
        "--no-sandbox-network",
        "--log-size",
        "2048",
        "--log-count",
        "3",
        "--protocol",
        "msgpack_experimental_v7",
        dir.to_str().unwrap(),
        "m.example:443",
        "w",
        "pw",
    ]));
    let c = WorkerConfig::load(&dir).unwrap();
    assert!(c.use_tls && c.delete_leftover_dirs && !c.sandbox_network);
    assert_eq!(c.ca_file.as_deref(), Some(ca.as_path()));
    assert_eq!(
        (c.keepalive, c.maxretries, c.log_size, c.log_count),
        (45, Some(7), 2048, 3)
    );
    assert_eq!(c.sandbox.as_deref(), Some("bwrap"));

    let o = run(&[
        "create-worker",
        "--protocol",
        "pb",
        tmp.path().join("x").to_str().unwrap(),
        "m",
        "w",
        "pw",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not supported"), "{}", stderr(&o));
    let o = run(&[
        "create-worker",
        "--run-as",
        "no-such-user-kiln",
        tmp.path().join("y").to_str().unwrap(),
        "m",
        "w",
        "pw",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no such user"), "{}", stderr(&o));
}
