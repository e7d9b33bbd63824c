//! Helpers shared by the `redis_*` integration tests (included with `#[path]`; as a test crate
//! of its own it holds no test).
#![cfg(feature = "redis")]
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const SHARED_URL: &str = "redis://127.0.0.1:6379";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skips a test (prints why) outside CI; fails it under `CI=true`.
pub fn skip_or_fail(why: &str) {
    if in_ci() {
        panic!("CI=true and {why}");
    }
    eprintln!("SKIPPED (not in CI): {why}");
}

/// A connection to the always-running Redis at 127.0.0.1:6379, or `None` (test skipped).
pub fn shared_redis() -> Option<redis::Connection> {
    let conn = redis::Client::open(SHARED_URL)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .and_then(|mut conn| redis::cmd("PING").query::<String>(&mut conn).map(|_| conn));
    match conn {
        Ok(conn) => Some(conn),
        Err(e) => {
            skip_or_fail(&format!("Redis at {SHARED_URL} is unreachable: {e}"));
            None
        }
    }
}

/// A prefix no other test (or run) uses.
pub fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("tollgate-test:{test}:{}:{nanos}", std::process::id())
}

/// A port nothing listens on now (nor on `port + offset`, when asked).
pub fn free_port(also_free_at: Option<u16>) -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        match also_free_at {
            None => return port,
            Some(offset) => {
                if port.checked_add(offset).is_some_and(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
                    return port;
                }
            }
        }
    }
}

/// True when `redis-server` and `redis-cli` can be run; else skips (or fails in CI).
pub fn have_redis_binaries() -> bool {
    let ok = |bin: &str| {
        Command::new(bin).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
    };
    if ok("redis-server") && ok("redis-cli") {
        true
    } else {
        skip_or_fail("redis-server/redis-cli are not installed");
        false
    }
}

/// A private `redis-server` on its own port, stopped by PID when dropped.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a throwaway server (no persistence) and waits until it answers.
    pub fn start(extra: &[&str]) -> Self {
        let port = free_port(extra.iter().any(|a| a.contains("cluster")).then_some(10_000));
        let dir = std::env::temp_dir().join(format!("tollgate-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server =
            Self { port, dir, extra: extra.iter().map(|s| s.to_string()).collect(), child: None };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// (Re)starts it on the same port and waits until it answers PING.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.connection().is_err() {
            assert!(Instant::now() < deadline, "redis-server on {} never answered", self.port);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills it (SIGKILL by PID) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let mut conn =
            redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(1))?;
        redis::cmd("PING").query::<String>(&mut conn)?;
        Ok(conn)
    }

    /// How many times `command` ran, from `INFO commandstats`.
    pub fn calls(&self, command: &str) -> u64 {
        let info: String =
            redis::cmd("INFO").arg("commandstats").query(&mut self.connection().unwrap()).unwrap();
        let prefix = format!("cmdstat_{}:calls=", command.to_lowercase());
        info.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
