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

/// SIGHUP reloads the file (and the environment) at once, and never stops the server. The
/// configuration path is a symlink into another directory, so the file watcher (which watches
/// the symlink's directory) sees no change: only SIGHUP reloads it.
#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_the_configuration_and_never_stops_the_server() {
    let root = std::env::temp_dir().join(format!("tollgate-sighup-{}", std::process::id()));
    let (watched, elsewhere) = (root.join("watched"), root.join("elsewhere"));
    std::fs::create_dir_all(&watched).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let contract =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/ratelimit.toml")).unwrap();
    let real = elsewhere.join("ratelimit.toml");
    std::fs::write(&real, &contract).unwrap();
    let link = watched.join("ratelimit.toml");
    std::os::unix::fs::symlink(&real, &link).unwrap();

    let mut child = server(&["--bind", "127.0.0.1:0", "--config", link.to_str().unwrap()], &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its log, line by line.
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let lines = BufReader::new(child.stderr.take().unwrap());
    let kept = log.clone();
    std::thread::spawn(move || {
        lines.lines().map_while(Result::ok).for_each(|l| kept.lock().unwrap().push(l))
    });
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on http://").unwrap().to_owned();
    let http = reqwest::Client::new();
    let burst = async || -> u64 {
        let policy: serde_json::Value =
            http.get(format!("http://{addr}/policy")).send().await.unwrap().json().await.unwrap();
        let tiers = policy["tiers"].as_array().unwrap();
        let anonymous = tiers.iter().find(|t| t["name"] == "anonymous").unwrap();
        anonymous["policies"][0]["burst"].as_u64().unwrap()
    };
    assert_eq!(burst().await, 5);
    let hup = || {
        let status = Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
    };

    std::fs::write(&real, contract.replacen("burst = 5", "burst = 7", 1)).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(burst().await, 5, "the watcher saw nothing: only SIGHUP reloads");
    hup();
    let start = Instant::now();
    while burst().await != 7 {
        assert!(start.elapsed() < Duration::from_secs(2), "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An invalid file: refused (each time), the server keeps serving the previous limits.
    std::fs::write(&real, contract.replacen("burst = 5", "burst = 0", 1)).unwrap();
    let metrics =
        async || http.get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
    for errors in 1..=3 {
        hup();
        let counted = format!("tollgate_config_reloads_total{{result=\"error\"}} {errors}");
        let start = Instant::now();
        while !metrics().await.contains(&counted) {
            assert!(start.elapsed() < Duration::from_secs(2), "no {counted}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(child.try_wait().unwrap().is_none(), "SIGHUP never stops the server");
    assert_eq!(burst().await, 7);
    // The refusal is logged with the error the same file gets at start-up, word for word.
    let out = server(&["--bind", "127.0.0.1:0", "--config", link.to_str().unwrap()], &[]).output().unwrap();
    assert!(!out.status.success());
    let startup = String::from_utf8_lossy(&out.stderr);
    let message = startup.lines().find_map(|l| l.strip_prefix("error: invalid configuration: ")).unwrap();
    assert!(message.contains("ratelimit.toml") && message.contains("tiers.anonymous.burst"), "{startup}");
    let refusals = log.lock().unwrap().iter().filter(|l| l.contains("ERROR") && l.contains(message)).count();
    assert_eq!(refusals, 3, "{message:?} in {:#?}", log.lock().unwrap());
    let page = metrics().await;
    assert!(page.contains("tollgate_config_reloads_total{result=\"ok\"} 1"), "{page}");

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert!(wait(&mut child, Duration::from_secs(10)).success());
    std::fs::remove_dir_all(&root).unwrap();
}
