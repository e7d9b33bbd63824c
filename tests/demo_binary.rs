//! The demo server as a user runs it: the compiled `examples/server` binary, its arguments,
//! its environment overrides, its exit status and its one `listening on` line.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `cargo test` builds the examples next to the test binaries: `target/<profile>/examples`.
fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join("examples").join("server");
    assert!(path.exists(), "{} is missing: cargo test builds it with --all-features", path.display());
    path
}

fn server(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(server_binary());
    command.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    command.env_remove("RUST_LOG");
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// Starts a server on a free port and returns it with its address, read from its one line.
fn start(env: &[(&str, &str)]) -> (Child, String) {
    let mut child =
        server(&["--bind", "127.0.0.1:0"], env).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on http://").unwrap_or_else(|| panic!("{line:?}"));
    (child, addr.to_owned())
}

fn wait(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < limit, "the server did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_invalid_configuration_exits_non_zero_before_listening_naming_file_and_key() {
    let dir = std::env::temp_dir().join(format!("tollgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broken.toml");
    std::fs::write(&file, "[tiers.anonymous]\nrequests_per_minute = 30\nburst = 0\n").unwrap();
    let out = server(&["--config", file.to_str().unwrap(), "--bind", "127.0.0.1:0"], &[]).output().unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.contains("listening"), "{stdout}");
    assert!(stderr.contains("broken.toml") && stderr.contains("tiers.anonymous.burst"), "{stderr}");

    std::fs::write(&file, "[tiers.anonymous]\nrequests_per_minute = 30\nburst = = 5\n").unwrap();
    let out = server(&["--config", file.to_str().unwrap()], &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("line 3"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn it_listens_obeys_the_environment_and_shuts_down_on_sigterm() {
    let (mut child, addr) = start(&[("TOLLGATE_DEFAULT_TIER", "free")]);
    let http = reqwest::Client::new();
    let health = http.get(format!("http://{addr}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let res = http.get(format!("http://{addr}/api/simple")).send().await.unwrap();
    assert_eq!(res.headers()["x-ratelimit-limit"], "10", "TOLLGATE_DEFAULT_TIER=free applies");
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert!(wait(&mut child, Duration::from_secs(10)).success(), "a graceful shutdown exits 0");
}
