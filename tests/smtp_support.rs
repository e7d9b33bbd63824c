//! A small SMTP sink for the email tests: a real listener on 127.0.0.1 that speaks enough
//! SMTP (RFC 5321: greeting, EHLO/HELO, MAIL, RCPT, DATA with dot-unstuffing, RSET, NOOP,
//! QUIT) for lettre to deliver to it, and keeps every message it accepts. Also a "dead relay"
//! that accepts connections and never says a word.
//!
//! Included by `tests/email_*.rs` with `#[path]`; compiled on its own it holds no test.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One message the sink accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    /// The message as sent (headers and body), dot-unstuffed, lines joined with CRLF.
    pub data: String,
}

impl Received {
    /// The value of the first header `name` (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = &self.data[..self.data.find("\r\n\r\n").unwrap_or(self.data.len())];
        let mut lines = head.split("\r\n").peekable();
        while let Some(line) = lines.next() {
            let Some((key, value)) = line.split_once(':') else { continue };
            if key.eq_ignore_ascii_case(name) {
                let mut value = value.trim().to_owned();
                while lines.peek().is_some_and(|next| next.starts_with([' ', '\t'])) {
                    value.push(' ');
                    value.push_str(lines.next().unwrap().trim());
                }
                return Some(value);
            }
        }
        None
    }

    /// The decoded body of the first part of `content_type` (`text/plain`, `text/html`),
    /// quoted-printable decoded.
    pub fn part(&self, content_type: &str) -> Option<String> {
        let at = self.data.find(&format!("Content-Type: {content_type}"))?;
        let rest = &self.data[at..];
        let body = &rest[rest.find("\r\n\r\n")? + 4..];
        let end = body.find("\r\n--").unwrap_or(body.len());
        let decoded = quoted_printable::decode(&body[..end], quoted_printable::ParseMode::Robust).ok()?;
        String::from_utf8(decoded).ok()
    }
}

/// A running sink; dropped, it stops accepting.
pub struct SmtpSink {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpSink {
    /// Binds 127.0.0.1 on a free port and serves SMTP there.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                tokio::spawn(session(stream, store.clone()));
            }
        });
        Self { addr, received, task }
    }

    /// `smtp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// Every message accepted so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits (polling, at most `within`) until at least `n` messages arrived; returns them.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.received();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn session(stream: tokio::net::TcpStream, store: Arc<Mutex<Vec<Received>>>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    if !say(&mut write, "220 sink.test ESMTP tollgate test sink\r\n").await {
        return;
    }
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let command = line.trim_end().to_owned();
        let verb = command.split([' ', ':']).next().unwrap_or("").to_ascii_uppercase();
        let reply = match verb.as_str() {
            "EHLO" => "250-sink.test greets you\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
            "HELO" => "250 sink.test\r\n",
            "MAIL" => {
                from = angle(&command);
                to.clear();
                "250 2.1.0 Ok\r\n"
            }
            "RCPT" => {
                to.push(angle(&command));
                "250 2.1.5 Ok\r\n"
            }
            "DATA" => {
                if !say(&mut write, "354 End data with <CR><LF>.<CR><LF>\r\n").await {
                    return;
                }
                let mut data = Vec::new();
                loop {
                    line.clear();
                    match lines.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let text = line.trim_end_matches(['\r', '\n']);
                    if text == "." {
                        break;
                    }
                    // Dot-unstuffing (RFC 5321 4.5.2).
                    data.push(if text.starts_with("..") { &text[1..] } else { text }.to_owned());
                }
                store.lock().unwrap().push(Received {
                    from: from.clone(),
                    to: std::mem::take(&mut to),
                    data: data.join("\r\n"),
                });
                "250 2.0.0 Ok: queued\r\n"
            }
            "RSET" => {
                from.clear();
                to.clear();
                "250 2.0.0 Ok\r\n"
            }
            "NOOP" => "250 2.0.0 Ok\r\n",
            "QUIT" => {
                let _ = say(&mut write, "221 2.0.0 Bye\r\n").await;
                return;
            }
            _ => "502 5.5.2 Command not recognized\r\n",
        };
        if !say(&mut write, reply).await {
            return;
        }
    }
}

async fn say(write: &mut tokio::net::tcp::OwnedWriteHalf, text: &str) -> bool {
    write.write_all(text.as_bytes()).await.is_ok()
}

/// The address between `<` and `>` of `MAIL FROM:<a@b>` / `RCPT TO:<c@d>`.
fn angle(command: &str) -> String {
    let start = command.find('<').map_or(0, |i| i + 1);
    let end = command[start..].find('>').map_or(command.len(), |i| start + i);
    command[start..end].to_owned()
}

/// A relay that accepts TCP connections and never answers: every SMTP client waits on it
/// until its own timeout. Dropped, it stops accepting and closes what it held.
pub struct DeadRelay {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DeadRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DeadRelay {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        Self { addr, task }
    }

    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }
}
