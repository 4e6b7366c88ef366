//! `voxtell serve` as a process: flags, start-up errors, the key file, and SIGTERM with a job
//! running. The routes themselves are tested in crates/voxtell-serve/tests.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn serve(extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_voxtell"));
    cmd.arg("serve");
    if !extra.contains(&"-m") {
        cmd.arg("-m").arg(fixtures().join("fusion/cfg_a"));
    }
    if !extra.contains(&"--embeddings") {
        cmd.arg("--embeddings").arg(fixtures().join("infer/predict/bank.npz"));
    }
    cmd.args(["--port", "0", "--max-memory", "2G", "--threads", "2"])
        .args(extra)
        .env_remove("VOXTELL_API_KEY")
        .env("HF_HOME", "/nonexistent-voxtell-test");
    cmd
}

/// Start a server and return it with its address (read from the "Serving on" line).
fn start(extra: &[&str]) -> (Child, String, std::thread::JoinHandle<String>) {
    let mut child = serve(extra).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let addr = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "the server ended before serving: {seen}");
        seen.push_str(&line);
        if let Some(rest) = line.split("Serving on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let rest = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        seen + &s
    });
    (child, addr, rest)
}

/// One HTTP/1.1 request; the status and body (the body read to the end of the connection).
fn http(addr: &str, request: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "{request}\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
        .unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, text.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

fn terminate(child: &Child) {
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
}

#[test]
fn sigterm_stops_the_server_cleanly_and_the_key_file_guards_it() {
    let key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key.path(), "k3y-from-file\n").unwrap();
    let (mut child, addr, log) = start(&["--api-key-file", key.path().to_str().unwrap()]);
    assert_eq!(http(&addr, "GET /healthz HTTP/1.1", b"").0, 200);
    assert_eq!(http(&addr, "GET /capabilities HTTP/1.1", b"").0, 401);
    let auth = "Authorization: Bearer k3y-from-file";
    let (status, caps) = http(&addr, &format!("GET /capabilities HTTP/1.1\r\n{auth}"), b"");
    assert_eq!(status, 200, "{caps}");
    assert!(caps.contains("\"cfg_a\""), "{caps}");
    let upload = std::fs::read(fixtures().join("infer/predict/images/ct_oblique.nii.gz")).unwrap();
    let (status, _) = http(&addr, &format!("POST /images?include_image=false HTTP/1.1\r\n{auth}"), &upload);
    assert_eq!(status, 200);
    terminate(&child);
    let t = Instant::now();
    let code = loop {
        if let Some(c) = child.try_wait().unwrap() {
            break c;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "the server did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "{code:?}");
    let log = log.join().unwrap();
    assert!(log.contains("stopping"), "{log}");
    assert!(!log.contains("k3y-from-file"), "the key is never printed: {log}");
}

#[test]
fn bad_start_up_is_an_error_naming_the_culprit() {
    let run = |args: &[&str]| {
        let out = serve(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run(&["-m", "/nonexistent/model"]);
    assert!(err.contains("/nonexistent/model"), "{err}");
    let err = run(&["--cache-memory", "3G"]);
    assert!(err.contains("--cache-memory"), "{err}");
    let err = run(&["--api-key-file", "/nonexistent/key"]);
    assert!(err.contains("--api-key-file"), "{err}");
    let err = run(&["--host", "not a host!"]);
    assert!(err.contains("--host"), "{err}");
    // The device flags parse as predict's do.
    let err = run(&["--device", "cuda:1", "--gpu", "2"]);
    assert!(err.contains("GPU 1") && err.contains("GPU 2"), "{err}");
    let err = run(&["--device", "cuda:one"]);
    assert!(err.contains("cuda:1"), "{err}");
    // A bank of another width than the model's text vectors (24).
    let dir = tempfile::tempdir().unwrap();
    let bank = dir.path().join("bank.npz");
    let mut b = voxtell::text::EmbeddingBank::new(7);
    b.insert("liver", &[0.5; 7]).unwrap();
    b.write(&bank).unwrap();
    let err = run(&["--embeddings", bank.to_str().unwrap()]);
    assert!(err.contains("7-wide") && err.contains("24-wide"), "{err}");
}
