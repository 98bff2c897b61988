//! The systemd contract: the unit passes `systemd-analyze verify` and scores at most 2.0 in
//! `systemd-analyze security --offline=true`; the daemon speaks sd_notify (READY, STATUS,
//! WATCHDOG, STOPPING) on a NOTIFY_SOCKET that the test provides.

#[path = "common/daemon.rs"]
mod common;
use common::*;
use std::os::unix::net::UnixDatagram;
use std::process::Command;

const ANALYZE: &str = "/usr/bin/systemd-analyze";

fn analyze() -> Command {
    assert!(
        std::path::Path::new(ANALYZE).exists(),
        "{ANALYZE} is missing (Debian package systemd)"
    );
    Command::new(ANALYZE)
}

#[test]
fn unit_verifies_clean_and_is_hardened() {
    let tmp = tempfile::tempdir().unwrap();
    // verify checks that ExecStart exists: point it at the binary under test.
    let unit = std::fs::read_to_string("systemd/assimd.service")
        .unwrap()
        .replace("/usr/local/bin/assimd", ASSIMD);
    let path = tmp.path().join("assimd.service");
    std::fs::write(&path, unit).unwrap();
    let out = analyze().arg("verify").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
    let out = analyze()
        .args(["security", "--offline=true", "systemd/assimd.service"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| {
            l.split_once("Overall exposure level for assimd.service:")
                .map(|(_, r)| r.split_whitespace().next().unwrap().parse().unwrap())
        })
        .unwrap_or_else(|| {
            panic!(
                "no overall exposure level in:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(level <= 2.0, "exposure {level} above 2.0:\n{text}");
}

#[test]
fn sd_notify_ready_status_watchdog_stopping() {
    let port = free_port();
    assimd::service::broker::start_embedded(port).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let s = write_config(tmp.path(), port, "");
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(GUARD)).unwrap();
    let mut child = Command::new(ASSIMD)
        .arg("run")
        .arg("--config")
        .arg(&s.config)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !(seen.contains("READY=1") && seen.contains("STATUS=") && seen.contains("WATCHDOG=1")) {
        let n = sock
            .recv(&mut buf)
            .expect("a notification before the guard");
        seen += &String::from_utf8_lossy(&buf[..n]);
        seen.push('\n');
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    while !seen.contains("STOPPING=1") {
        let n = sock.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
        seen += &String::from_utf8_lossy(&buf[..n]);
    }
    assert!(child.wait().unwrap().success());
}
