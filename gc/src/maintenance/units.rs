//! Installing the maintenance schedule outside the server, for deployments that want
//! it: systemd timer/service units `registry-maintenance@{hourly,daily,weekly}`
//! (`Persistent=true`, so a run missed while the machine was off happens at boot) or a
//! marked crontab block. Both call the binary by its full path; `stop` removes exactly
//! what `start` wrote.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const SCHEDULES: [&str; 3] = ["hourly", "daily", "weekly"];
pub const CRON_BEGIN: &str = "# BEGIN drydock registry maintenance";
pub const CRON_END: &str = "# END drydock registry maintenance";

/// Where the schedule is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduler {
    SystemdTimer,
    Crontab,
}

impl Scheduler {
    /// `auto` picks systemd when it is the running init, else crontab.
    pub fn parse(s: &str) -> Result<Scheduler, String> {
        match s {
            "systemd-timer" | "systemd" => Ok(Scheduler::SystemdTimer),
            "crontab" | "cron" => Ok(Scheduler::Crontab),
            "auto" => Ok(if Path::new("/run/systemd/system").is_dir() {
                Scheduler::SystemdTimer
            } else {
                Scheduler::Crontab
            }),
            other => Err(format!(
                "unknown scheduler {other:?}: use auto, systemd-timer or crontab"
            )),
        }
    }
}

fn quote(p: &Path) -> String {
    let s = p.display().to_string();
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+@".contains(c))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The service unit of one schedule.
pub fn service_unit(binary: &Path, config: &Path, schedule: &str) -> String {
    format!(
        "[Unit]\n\
         Description=drydock registry maintenance ({schedule})\n\
         Documentation=file://{doc}\n\
         After=network.target\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart={bin} maintenance run --schedule={schedule} {cfg}\n\
         Nice=10\n\
         IOSchedulingClass=idle\n",
        doc = "/usr/share/doc/drydock/maintenance.md",
        bin = quote(binary),
        cfg = quote(config),
    )
}

/// The timer unit of one schedule.
pub fn timer_unit(schedule: &str) -> String {
    format!(
        "[Unit]\n\
         Description=drydock registry maintenance ({schedule})\n\
         \n\
         [Timer]\n\
         OnCalendar={schedule}\n\
         Persistent=true\n\
         RandomizedDelaySec=300\n\
         \n\
         [Install]\n\
         WantedBy=timers.target\n"
    )
}

fn unit_name(schedule: &str, kind: &str) -> String {
    format!("registry-maintenance@{schedule}.{kind}")
}

fn systemctl(args: &[&str]) -> Result<(), String> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .map_err(|e| format!("systemctl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "systemctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Writes the six units into `dir`; with `activate`, reloads systemd and enables and
/// starts the timers. Returns the files written.
pub fn install_systemd(
    dir: &Path,
    binary: &Path,
    config: &Path,
    activate: bool,
) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for s in SCHEDULES {
        for (kind, text) in [
            ("service", service_unit(binary, config, s)),
            ("timer", timer_unit(s)),
        ] {
            let p = dir.join(unit_name(s, kind));
            std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
            written.push(p);
        }
    }
    if activate {
        systemctl(&["daemon-reload"])?;
        for s in SCHEDULES {
            systemctl(&["enable", "--now", &unit_name(s, "timer")])?;
        }
    }
    Ok(written)
}

/// Stops and disables the timers (with `activate`) and removes the unit files.
pub fn remove_systemd(dir: &Path, activate: bool) -> Result<Vec<PathBuf>, String> {
    if activate {
        for s in SCHEDULES {
            let _ = systemctl(&["disable", "--now", &unit_name(s, "timer")]);
        }
    }
    let mut removed = Vec::new();
    for s in SCHEDULES {
        for kind in ["service", "timer"] {
            let p = dir.join(unit_name(s, kind));
            if p.exists() {
                std::fs::remove_file(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                removed.push(p);
            }
        }
    }
    if activate {
        let _ = systemctl(&["daemon-reload"]);
    }
    Ok(removed)
}

/// The marked crontab block.
pub fn crontab_block(binary: &Path, config: &Path) -> String {
    let (bin, cfg) = (quote(binary), quote(config));
    format!(
        "{CRON_BEGIN} (written by `registry maintenance start`; `registry maintenance stop` removes it)\n\
         17 * * * * {bin} maintenance run --schedule=hourly {cfg}\n\
         27 3 * * * {bin} maintenance run --schedule=daily {cfg}\n\
         37 4 * * 0 {bin} maintenance run --schedule=weekly {cfg}\n\
         {CRON_END}\n"
    )
}

/// `existing` without the block (a missing END removes to the end: a torn block never
/// survives).
pub fn without_block(existing: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in existing.lines() {
        if line.starts_with(CRON_BEGIN) {
            inside = true;
            continue;
        }
        if inside {
            if line.starts_with(CRON_END) {
                inside = false;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// `existing` with the block replaced or appended.
pub fn with_block(existing: &str, block: &str) -> String {
    let mut out = without_block(existing);
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(block);
    out
}

fn read_crontab(file: Option<&Path>) -> Result<String, String> {
    match file {
        Some(f) => match std::fs::read_to_string(f) {
            Ok(s) => Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(format!("{}: {e}", f.display())),
        },
        None => {
            let out = Command::new("crontab").arg("-l").output().map_err(|e| {
                format!("crontab -l: {e} (install cron, or use --scheduler=systemd-timer)")
            })?;
            // `crontab -l` fails when the user has no crontab yet.
            Ok(if out.status.success() {
                String::from_utf8_lossy(&out.stdout).into_owned()
            } else {
                String::new()
            })
        }
    }
}

fn write_crontab(file: Option<&Path>, text: &str) -> Result<(), String> {
    match file {
        Some(f) => std::fs::write(f, text).map_err(|e| format!("{}: {e}", f.display())),
        None => {
            use std::io::Write;
            let mut child = Command::new("crontab")
                .arg("-")
                .stdin(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| format!("crontab -: {e}"))?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin
                    .write_all(text.as_bytes())
                    .map_err(|e| e.to_string())?;
            }
            let status = child.wait().map_err(|e| e.to_string())?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("crontab - exited with {status}"))
            }
        }
    }
}

/// Installs (or replaces) the block in the user's crontab, or in `file`.
pub fn install_crontab(file: Option<&Path>, binary: &Path, config: &Path) -> Result<(), String> {
    let existing = read_crontab(file)?;
    write_crontab(file, &with_block(&existing, &crontab_block(binary, config)))
}

/// Removes the block whole.
pub fn remove_crontab(file: Option<&Path>) -> Result<(), String> {
    let existing = read_crontab(file)?;
    write_crontab(file, &without_block(&existing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_is_added_replaced_and_removed_whole() {
        let b = crontab_block(
            Path::new("/usr/bin/registry"),
            Path::new("/etc/drydock/config.yml"),
        );
        let mine = "MAILTO=ops\n0 1 * * * backup\n";
        let with = with_block(mine, &b);
        assert!(with.starts_with(mine) && with.ends_with(&b));
        assert_eq!(
            with_block(&with, &b),
            with,
            "installing twice adds a second block"
        );
        assert_eq!(without_block(&with), mine);
        let torn = format!("{mine}{CRON_BEGIN}\n17 * * * * x\n");
        assert_eq!(without_block(&torn), mine);
    }

    #[test]
    fn units_name_the_binary_by_full_path() {
        let s = service_unit(
            Path::new("/opt/dry dock/registry"),
            Path::new("/etc/c.yml"),
            "daily",
        );
        assert!(s.contains(
            "ExecStart='/opt/dry dock/registry' maintenance run --schedule=daily /etc/c.yml"
        ));
        assert!(timer_unit("weekly").contains("Persistent=true"));
    }
}
