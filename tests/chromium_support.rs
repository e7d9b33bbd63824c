//! Headless Chromium for the page tests: the DOM after rendering, and screenshots at a given
//! width in the light or the dark scheme.
//!
//! Chromium missing: under `CI=true` the caller fails; elsewhere it prints why it is skipped.
//! Install it with `apt-get update && apt-get install -y chromium`.
//!
//! Included by the page tests with `#[path]`; compiled on its own it holds no test.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// The browser, or `None` (the test is skipped outside CI, fails under `CI=true`).
pub fn chromium(test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let found = ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("chromium is not installed (CI=true): apt-get install -y chromium");
        }
        eprintln!("SKIPPED {test}: chromium is not installed");
    }
    found
}

/// The light or the dark colour scheme (`prefers-color-scheme`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Light,
    Dark,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Light => "light",
            Scheme::Dark => "dark",
        }
    }

    fn flags(self) -> &'static [&'static str] {
        match self {
            Scheme::Light => &["--blink-settings=preferredColorScheme=1"],
            Scheme::Dark => &["--force-dark-mode", "--blink-settings=preferredColorScheme=0"],
        }
    }
}

/// Runs Chromium headless with `args` after the common flags (a fresh profile under
/// `scratch`); returns its stdout.
pub async fn run(browser: &Path, scratch: &Path, args: &[&str]) -> String {
    let profile = scratch.join(format!("profile-{}", fastrand_suffix()));
    let mut command = tokio::process::Command::new(browser);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(90), command.output())
        .await
        .expect("chromium finished within 90 s")
        .expect("chromium started");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        output.status.success(),
        "chromium failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("the DOM is UTF-8")
}

/// The DOM of `url` after rendering, in `scheme`.
pub async fn dom(browser: &Path, scratch: &Path, url: &str, scheme: Scheme) -> String {
    let mut args: Vec<&str> = scheme.flags().to_vec();
    args.extend(["--dump-dom", url]);
    run(browser, scratch, &args).await
}

/// A screenshot of `url`, `width` × `height` CSS pixels, in `scheme`, written to `to`;
/// returns the PNG's bytes (checked to be a PNG of that size).
pub async fn screenshot(
    browser: &Path,
    scratch: &Path,
    url: &str,
    width: u32,
    height: u32,
    scheme: Scheme,
    to: &Path,
) -> Vec<u8> {
    let shot = format!("--screenshot={}", to.display());
    let size = format!("--window-size={width},{height}");
    let mut args: Vec<&str> = scheme.flags().to_vec();
    args.extend([shot.as_str(), size.as_str(), url]);
    run(browser, scratch, &args).await;
    let png = std::fs::read(to).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let (w, h) = (
        u32::from_be_bytes(png[16..20].try_into().unwrap()),
        u32::from_be_bytes(png[20..24].try_into().unwrap()),
    );
    assert_eq!((w, h), (width, height), "screenshot size");
    png
}

/// The text content of the first element with `attribute` (e.g. `id="tier"`).
pub fn text_of<'a>(dom: &'a str, attribute: &str) -> &'a str {
    let at = dom.find(attribute).unwrap_or_else(|| panic!("no {attribute} in {dom}"));
    let start = at + dom[at..].find('>').unwrap() + 1;
    let end = start + dom[start..].find('<').unwrap();
    &dom[start..end]
}

/// A scratch directory for one test.
pub fn scratch(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fastrand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// The RGB pixels of a PNG screenshot.
pub fn pixels(png_bytes: &[u8]) -> Vec<[u8; 3]> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    buf[..info.buffer_size()].chunks(channels).map(|p| [p[0], p[1], p[2]]).collect()
}

/// How many pixels are within `tolerance` (per channel) of `rgb` (`0xRRGGBB`).
pub fn count_near(pixels: &[[u8; 3]], rgb: u32, tolerance: u8) -> usize {
    let target = [(rgb >> 16) as u8, (rgb >> 8) as u8, rgb as u8];
    pixels.iter().filter(|p| p.iter().zip(target).all(|(a, b)| a.abs_diff(b) <= tolerance)).count()
}
