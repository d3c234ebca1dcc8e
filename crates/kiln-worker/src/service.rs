//! `kiln-worker install-service`: prints service definitions that start the
//! worker at boot (systemd, launchd, FreeBSD rc.d, cron). It prints only; the
//! user copies the one they want.

use std::path::Path;

/// What the service files need to know.
#[derive(Debug, Clone)]
pub struct ServiceSpec<'a> {
    /// Absolute path of the `kiln-worker` binary.
    pub exe: &'a Path,
    /// Absolute base directory.
    pub basedir: &'a Path,
    /// The account the worker runs as.
    pub user: &'a str,
    /// The worker's name (used in unit and label names).
    pub name: &'a str,
}

/// A name usable in unit file names, launchd labels and rc.d variables.
fn slug(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Quotes a path for systemd's ExecStart (which splits on spaces and handles quotes).
fn systemd_quote(text: &str) -> String {
    if text
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\\' || c == '\'')
    {
        format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        text.to_owned()
    }
}

/// Quotes a word for /bin/sh.
fn sh_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c))
    {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// The systemd unit (foreground `run`, restarted by systemd).
pub fn systemd_unit(s: &ServiceSpec) -> String {
    let exe = systemd_quote(&s.exe.display().to_string());
    let dir = systemd_quote(&s.basedir.display().to_string());
    format!(
        "[Unit]\n\
         Description=Kiln build worker {name} ({basedir})\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         User={user}\n\
         WorkingDirectory={dir}\n\
         ExecStart={exe} run {dir}\n\
         # `kiln-worker stop --graceful` equivalent: systemctl kill -s SIGUSR1 <unit>\n\
         KillSignal=SIGTERM\n\
         TimeoutStopSec=60\n\
         Restart=always\n\
         RestartSec=10\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        name = s.name,
        basedir = s.basedir.display(),
        user = s.user,
    )
}

/// The launchd property list (macOS).
pub fn launchd_plist(s: &ServiceSpec) -> String {
    let exe = xml_escape(&s.exe.display().to_string());
    let dir = xml_escape(&s.basedir.display().to_string());
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
         <plist version=\"1.0\">\n\
         <dict>\n\
         \x20 <key>Label</key>\n\
         \x20 <string>org.kiln.worker.{label}</string>\n\
         \x20 <key>UserName</key>\n\
         \x20 <string>{user}</string>\n\
         \x20 <key>ProgramArguments</key>\n\
         \x20 <array>\n\
         \x20   <string>{exe}</string>\n\
         \x20   <string>run</string>\n\
         \x20   <string>{dir}</string>\n\
         \x20 </array>\n\
         \x20 <key>WorkingDirectory</key>\n\
         \x20 <string>{dir}</string>\n\
         \x20 <key>RunAtLoad</key>\n\
         \x20 <true/>\n\
         \x20 <key>KeepAlive</key>\n\
         \x20 <true/>\n\
         \x20 <key>ThrottleInterval</key>\n\
         \x20 <integer>10</integer>\n\
         </dict>\n\
         </plist>\n",
        label = slug(s.name),
        user = xml_escape(s.user),
    )
}

/// The FreeBSD rc.d script; rc.subr finds the daemon through our pidfile.
pub fn freebsd_rc(s: &ServiceSpec) -> String {
    format!(
        "#!/bin/sh\n\
         #\n\
         # PROVIDE: kiln_worker\n\
         # REQUIRE: LOGIN NETWORKING\n\
         # KEYWORD: shutdown\n\
         #\n\
         # Add to /etc/rc.conf:  kiln_worker_enable=\"YES\"\n\
         \n\
         . /etc/rc.subr\n\
         \n\
         name=kiln_worker\n\
         rcvar=kiln_worker_enable\n\
         load_rc_config $name\n\
         \n\
         : ${{kiln_worker_enable:=\"NO\"}}\n\
         : ${{kiln_worker_user:={user}}}\n\
         : ${{kiln_worker_basedir:={dir}}}\n\
         \n\
         command={exe}\n\
         command_args=\"start --quiet ${{kiln_worker_basedir}}\"\n\
         pidfile=\"${{kiln_worker_basedir}}/kiln-worker.pid\"\n\
         \n\
         run_rc_command \"$1\"\n",
        user = sh_quote(s.user),
        dir = sh_quote(&s.basedir.display().to_string()),
        exe = sh_quote(&s.exe.display().to_string()),
    )
}

/// The crontab line CPython's volunteer page asks for.
pub fn crontab_line(s: &ServiceSpec) -> String {
    format!(
        "@reboot {} restart {}\n",
        sh_quote(&s.exe.display().to_string()),
        sh_quote(&s.basedir.display().to_string())
    )
}

/// Everything `install-service` prints, each with a heading saying where it goes.
pub fn render_all(s: &ServiceSpec) -> String {
    let unit = format!("kiln-worker-{}.service", slug(s.name));
    let plist = format!("org.kiln.worker.{}.plist", slug(s.name));
    let rule = "#".repeat(78);
    format!(
        "{rule}\n\
         # Linux (systemd): save as /etc/systemd/system/{unit}, then run\n\
         #   systemctl daemon-reload && systemctl enable --now {unit}\n\
         {rule}\n\
         {systemd}\n\
         {rule}\n\
         # macOS (launchd): save as /Library/LaunchDaemons/{plist}, then run\n\
         #   sudo launchctl bootstrap system /Library/LaunchDaemons/{plist}\n\
         {rule}\n\
         {launchd}\n\
         {rule}\n\
         # FreeBSD (rc.d): save as /usr/local/etc/rc.d/kiln_worker (chmod 555), then run\n\
         #   sysrc kiln_worker_enable=YES && service kiln_worker start\n\
         {rule}\n\
         {rc}\n\
         {rule}\n\
         # Any Unix (cron): as user {user}, run `crontab -e` and add this line\n\
         # (restart, not start, so a pidfile left by an unclean shutdown never matters)\n\
         {rule}\n\
         {cron}",
        systemd = systemd_unit(s),
        launchd = launchd_plist(s),
        rc = freebsd_rc(s),
        cron = crontab_line(s),
        user = s.user,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("/home/bb/area"), "/home/bb/area");
        assert_eq!(sh_quote("/home/b b/it's"), "'/home/b b/it'\\''s'");
        assert_eq!(systemd_quote("/a b"), "\"/a b\"");
        assert_eq!(xml_escape("a&<b>"), "a&amp;&lt;b&gt;");
        assert_eq!(slug("w.1 x"), "w-1-x");
    }
}
