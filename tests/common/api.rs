//! HTTP test harness for `kiln serve`: a throwaway workspace whose real `kiln serve` process is
//! killed when the guard drops, requests and server-sent events through `ureq` (plus raw
//! HTTP/1.1 over `std::net::TcpStream`, and slow clients, for what no well-behaved client sends),
//! tokens made with `kiln token create`, and the route table read from
//! `engine/server/src/routes/` itself (`mod.rs` and the handlers' `#[utoipa::path]`) so the
//! tests cannot drift from it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Workspace, repo_root, text};

/// A run id that exists nowhere.
pub const FAKE_ID: &str = "00000000-0000-0000-0000-000000000000";

/// The demo params of `workflows/ultralytics-detect.yaml` as a `POST /runs` body.
pub fn demo_run(training: &str) -> Value {
    serde_json::json!({
        "workflow": "ultralytics-detect",
        "params": {
            "project": "demo",
            "release": "demo-release.zip",
            "training_name": training,
            "overrides": {"epochs": 2, "imgsz": 64, "batch": 4, "device": "cpu"},
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Route table

/// One endpoint of the route table: method, path under /api/v1, the claim it needs (None:
/// public).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: String,
    pub path: String,
    pub claim: Option<String>,
}

impl Route {
    /// The path with `{id}` replaced.
    pub fn concrete(&self, id: &str) -> String {
        format!("/api/v1{}", self.path.replace("{id}", id))
    }
}

/// The `claim` of a route open to any valid token.
pub const ANY_TOKEN: &str = "(any token)";

/// Every route of the route table, `engine/server/src/routes/mod.rs`: each
/// `on(routes!(module::handler), Claim)` of `api()` is a guarded route whose method and path are
/// those of the handler's `#[utoipa::path(METHOD, path = "PATH", ...)]` (in `routes/<module>.rs`
/// or a file of `routes/<module>/`); each `.route("PATH", METHOD(...))` of `router()` is public.
pub fn route_table() -> Vec<Route> {
    let dir = repo_root().join("engine/server/src/routes");
    let file = dir.join("mod.rs");
    let src = std::fs::read_to_string(&file).unwrap();
    // The body of a function of the file, without whitespace.
    let body = |name: &str| -> String {
        let start = src
            .find(name)
            .unwrap_or_else(|| panic!("routes/mod.rs has `{name}`"));
        let rest = &src[start..];
        let end = rest.find("\n}\n").unwrap_or(rest.len());
        squeeze(&rest[..end])
    };
    let mut routes = Vec::new();
    for seg in body("pub fn api(").split("on(routes!(").skip(1) {
        let (handler, rest) = seg
            .split_once("),")
            .expect("on(routes!(module::handler), Claim)");
        let (claim, _) = rest.split_once(')').unwrap();
        let (module, name) = handler.rsplit_once("::").expect("routes!(module::handler)");
        let (method, path) = operation(&dir, module, name);
        routes.push(Route {
            method,
            path,
            claim: Some(
                claim
                    .trim_end_matches(',')
                    .trim_start_matches("Claim::")
                    .to_owned(),
            ),
        });
    }
    // `signed_in(routes!(module::handler))`: any valid token, whatever its claims.
    for seg in body("pub fn api(").split("signed_in(routes!(").skip(1) {
        let (handler, _) = seg
            .split_once(')')
            .expect("signed_in(routes!(module::handler))");
        let (module, name) = handler.rsplit_once("::").expect("routes!(module::handler)");
        let (method, path) = operation(&dir, module, name);
        routes.push(Route {
            method,
            path,
            claim: Some(ANY_TOKEN.to_owned()),
        });
    }
    for seg in body("pub fn router(").split(".route(").skip(1) {
        // `.route("PATH", get(handler))`: a public route.
        let seg = seg.strip_prefix('"').expect("route path literal");
        let (path, rest) = seg.split_once('"').unwrap();
        let (method, _) = rest.trim_start_matches(',').split_once('(').unwrap();
        routes.push(Route {
            method: method.to_uppercase(),
            path: path.to_owned(),
            claim: None,
        });
    }
    assert!(
        routes.len() >= 20,
        "could not read the route table from {}: {routes:?}",
        file.display()
    );
    routes
}

fn squeeze(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// The method and path of the `#[utoipa::path(...)]` of `pub async fn name` in the route module
/// `module` of `dir`.
fn operation(dir: &std::path::Path, module: &str, name: &str) -> (String, String) {
    let mut files = vec![dir.join(format!("{module}.rs"))];
    if let Ok(entries) = std::fs::read_dir(dir.join(module)) {
        files.extend(entries.map(|e| e.unwrap().path()));
    }
    for file in files {
        let Ok(src) = std::fs::read_to_string(&file) else {
            continue;
        };
        let Some(at) = src.find(&format!("pub async fn {name}(")) else {
            continue;
        };
        let attr = src[..at]
            .rfind("#[utoipa::path(")
            .unwrap_or_else(|| panic!("{}: `{name}` has no #[utoipa::path]", file.display()));
        let attr = squeeze(&src[attr + "#[utoipa::path(".len()..at]);
        let (method, rest) = attr.split_once(',').unwrap();
        let path = rest
            .strip_prefix("path=\"")
            .and_then(|p| p.split_once('"'))
            .unwrap_or_else(|| {
                panic!(
                    "{}: #[utoipa::path({method}, path = \"...\"",
                    file.display()
                )
            })
            .0;
        return (method.to_uppercase(), path.to_owned());
    }
    panic!(
        "no `pub async fn {name}` in the route module `{module}` of {}",
        dir.display()
    );
}

pub const CLAIMS: [&str; 5] = [
    "CreateTrainingRun",
    "ScheduleTrainingRun",
    "DeleteTrainingRun",
    "PublishTrainingRunTrainedModel",
    "ViewTrainingRuns",
];

// ---------------------------------------------------------------------------------------------
// HTTP client

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        text(&self.body)
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response {} is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }

    /// Why this is not an RFC 9457 problem with `code` and `detail`, if it is not.
    pub fn problem_error(&self) -> Option<String> {
        let ct = self.header("content-type").unwrap_or("");
        if !ct.starts_with("application/problem+json") {
            return Some(format!(
                "{} has content-type `{ct}`, not application/problem+json; body: {}",
                self.status,
                self.text()
            ));
        }
        let Ok(v) = serde_json::from_slice::<Value>(&self.body) else {
            return Some(format!(
                "{}: problem body is not JSON: {}",
                self.status,
                self.text()
            ));
        };
        for key in ["code", "detail", "title", "type"] {
            if v[key].as_str().is_none_or(str::is_empty) {
                return Some(format!("{}: problem lacks `{key}`: {v}", self.status));
            }
        }
        if v["status"] != self.status {
            return Some(format!(
                "problem `status` {} differs from the HTTP status {}",
                v["status"], self.status
            ));
        }
        None
    }

    /// Assert an RFC 9457 problem with this status and code; returns the body.
    #[track_caller]
    pub fn problem(&self, status: u16, code: &str) -> Value {
        assert_eq!(
            self.status,
            status,
            "expected {status} {code}, got: {}",
            self.text()
        );
        if let Some(e) = self.problem_error() {
            panic!("{e}");
        }
        let v = self.json();
        assert_eq!(v["code"], code, "{v}");
        v
    }
}

/// A `ureq` agent for one request: every status is an answer (not an error), redirects are not
/// followed, and the whole exchange, its body included, is bounded by `timeout`.
fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// Send one request through `ureq`; the response body is left to read. Each request has its
/// own connection (`Connection: close`), as the server's connection bound and timeouts expect.
fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("Connection", "close");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let agent = agent(timeout);
    match body {
        Some(b) => agent.run(req.body(b)?),
        // `Content-Length: 0`, as for any body-carrying method.
        None if matches!(method, "POST" | "PUT" | "PATCH") => agent.run(req.body(&b""[..])?),
        None => agent.run(req.body(())?),
    }
}

/// The headers as (lowercase name, value) pairs.
fn header_list(headers: &ureq::http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (k.as_str().to_owned(), v)
        })
        .collect()
}

/// One request through `ureq`; the whole response is read (bounded by `timeout`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Resp, ureq::Error> {
    let (parts, mut body) = send(addr, method, path, headers, body, timeout)?.into_parts();
    Ok(Resp {
        status: parts.status.as_u16(),
        headers: header_list(&parts.headers),
        body: body.read_to_vec()?,
    })
}

fn write_request(
    stream: &mut TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<()> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    } else if matches!(method, "POST" | "PUT" | "PATCH") {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if let Some(b) = body {
        stream.write_all(b)?;
    }
    stream.flush()
}

/// The head of a raw response.
struct Head {
    status: u16,
    /// (lowercase name, value)
    headers: Vec<(String, String)>,
    /// Its length in bytes: the body follows.
    len: usize,
}

/// The head of a raw response, once `bytes` hold all of it.
fn parse_head(bytes: &[u8]) -> std::io::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(len) = resp.parse(bytes).map_err(std::io::Error::other)? else {
        return Ok(None);
    };
    let headers = resp
        .headers
        .iter()
        .map(|h| {
            let v = String::from_utf8_lossy(h.value).into_owned();
            (h.name.to_ascii_lowercase(), v)
        })
        .collect();
    Ok(Some(Head {
        status: resp.code.unwrap_or_default(),
        headers,
        len,
    }))
}

/// One HTTP/1.1 request written by hand, for what no well-behaved client sends; the whole
/// response, which must have a `Content-Length`, is read (bounded by `timeout`).
pub fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> std::io::Result<Resp> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // A server may answer (e.g. 413) before reading the whole body: still read its answer.
    let written = write_request(&mut stream, addr, method, path, headers, body);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head = loop {
        if let Some(head) = parse_head(&buf)? {
            break head;
        }
        let n = match stream.read(&mut chunk) {
            Ok(0) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("closed before a whole answer: {:?}", text(&buf)),
            )),
            other => other,
        };
        match n {
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(written.err().unwrap_or(e)),
        }
    };
    let length = head
        .headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .ok_or_else(|| std::io::Error::other(format!("no Content-Length in {:?}", head.headers)))?;
    let mut body = buf.split_off(head.len);
    if body.len() < length {
        let mut rest = vec![0; length - body.len()];
        stream.read_exact(&mut rest)?;
        body.extend(rest);
    }
    body.truncate(length);
    Ok(Resp {
        status: head.status,
        headers: head.headers,
        body,
    })
}

/// One server-sent event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// An open `text/event-stream` response.
pub struct Sse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body as it arrives; `ureq` fails a read past the deadline.
    reader: BufReader<ureq::BodyReader<'static>>,
    deadline: Instant,
}

impl Sse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The next event; None at the end of the stream. Panics past the deadline. As a browser
    /// does, a block without a `data` line is not an event (it is skipped).
    pub fn next_event(&mut self) -> Option<SseEvent> {
        let mut ev = SseEvent::default();
        let mut has_data = false;
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "SSE stream: deadline passed; so far {ev:?}"
            );
            let mut raw = Vec::new();
            match self.reader.read_until(b'\n', &mut raw) {
                // An unterminated last block is not dispatched either.
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => panic!("SSE stream: {e} (deadline reached?); so far {ev:?}"),
            }
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if has_data {
                    if ev.event.is_empty() {
                        ev.event = "message".into();
                    }
                    return Some(ev);
                }
                ev = SseEvent::default();
                continue;
            }
            if line.starts_with(':') {
                continue; // comment / keep-alive
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => ev.event = value.to_owned(),
                "id" => ev.id = Some(value.to_owned()),
                "data" => {
                    if has_data {
                        ev.data.push('\n');
                    }
                    ev.data.push_str(value);
                    has_data = true;
                }
                _ => {}
            }
        }
    }

    /// Every event up to and including the first `end` event (or the end of the stream).
    pub fn until_end(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while let Some(ev) = self.next_event() {
            let end = ev.event == "end";
            out.push(ev);
            if end {
                break;
            }
        }
        out
    }
}

/// GET `path` as an event stream through `ureq` (the response body is read as it arrives, until
/// `timeout` from now).
pub fn sse(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Sse, ureq::Error> {
    let deadline = Instant::now() + timeout;
    let mut all = vec![("Accept", "text/event-stream")];
    all.extend_from_slice(headers);
    let (parts, body) = send(addr, "GET", path, &all, None, timeout)?.into_parts();
    Ok(Sse {
        status: parts.status.as_u16(),
        headers: header_list(&parts.headers),
        reader: BufReader::new(body.into_reader()),
        deadline,
    })
}

// ---------------------------------------------------------------------------------------------
// Slow clients

/// How a [`Dribbler`] ended.
#[derive(Debug)]
pub struct DribbleEnd {
    /// When the server closed the connection (None: it was still open when the dribbler
    /// stopped or ran out of time).
    pub closed_after: Option<Duration>,
    /// Whatever the server answered.
    pub response: Vec<u8>,
}

impl DribbleEnd {
    /// The status of the answer, when its whole head arrived.
    pub fn status(&self) -> Option<u16> {
        Some(parse_head(&self.response).ok()??.status)
    }

    /// What came after the answer's head.
    pub fn body(&self) -> String {
        match parse_head(&self.response) {
            Ok(Some(head)) => text(&self.response[head.len..]),
            _ => String::new(),
        }
    }
}

/// A client that sends `head`, then one byte of `drip` every `every`, on its own thread, until
/// the server closes the connection, `limit` passes, or it is stopped.
pub struct Dribbler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<DribbleEnd>,
}

impl Dribbler {
    pub fn start(
        addr: SocketAddr,
        head: &[u8],
        drip: u8,
        every: Duration,
        limit: Duration,
    ) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        stream.set_read_timeout(Some(every)).unwrap();
        stream.write_all(head).unwrap();
        let started = Instant::now();
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut response = Vec::new();
            let mut buf = [0u8; 4096];
            let closed = |response| DribbleEnd {
                closed_after: Some(started.elapsed()),
                response,
            };
            while started.elapsed() < limit && !flag.load(Ordering::SeqCst) {
                match stream.read(&mut buf) {
                    Ok(0) => return closed(response),
                    Ok(n) => response.extend_from_slice(&buf[..n]),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => return closed(response),
                }
                if stream.write_all(&[drip]).is_err() {
                    return closed(response);
                }
            }
            DribbleEnd {
                closed_after: None,
                response,
            }
        });
        Self { stop, handle }
    }

    /// A client dribbling the headers of a GET.
    pub fn headers(addr: SocketAddr, limit: Duration) -> Self {
        Self::start(
            addr,
            b"GET /api/v1/runs HTTP/1.1\r\nHost: kiln\r\nX-Slow: ",
            b'a',
            Duration::from_millis(300),
            limit,
        )
    }

    /// A client dribbling the body of a run's request (`POST /api/v1/runs` as `token`, of
    /// `length` bytes), one space every `every`.
    pub fn run_body(
        addr: SocketAddr,
        token: &str,
        length: usize,
        every: Duration,
        limit: Duration,
    ) -> Self {
        let head = format!(
            "POST /api/v1/runs HTTP/1.1\r\nHost: kiln\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        );
        Self::start(addr, head.as_bytes(), b' ', every, limit)
    }

    /// Wait for the end (the server closing, or `limit`).
    pub fn wait(self) -> DribbleEnd {
        self.handle.join().unwrap()
    }

    /// Stop dribbling and close the connection.
    pub fn stop(self) -> DribbleEnd {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wait()
    }
}

// ---------------------------------------------------------------------------------------------
// Workspace and server

/// A test workspace (see `common::Workspace`) with `workflows/` for the server and, optionally,
/// a PostgreSQL database instead of SQLite.
pub struct ApiWorkspace {
    pub ws: Workspace,
    pub database_url: Option<String>,
}

/// A fresh database on the PostgreSQL server of `KILN_TEST_POSTGRES_URL`; None when unset.
pub fn fresh_postgres() -> Option<String> {
    let admin = std::env::var("KILN_TEST_POSTGRES_URL")
        .ok()
        .filter(|s| !s.trim().is_empty())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    Some(rt.block_on(kiln_store::test_support::fresh_postgres_database(&admin)))
}

impl ApiWorkspace {
    pub fn new() -> Self {
        Self::with(Workspace::new(), None)
    }

    pub fn with(ws: Workspace, database_url: Option<String>) -> Self {
        let dir = ws.root().join("workflows");
        std::fs::create_dir_all(&dir).unwrap();
        for workflow in ["ultralytics-detect.yaml", "mmdetection-detect.yaml"] {
            std::fs::copy(
                repo_root().join("workflows").join(workflow),
                dir.join(workflow),
            )
            .unwrap();
        }
        Self { ws, database_url }
    }

    fn args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = Vec::new();
        if let Some(url) = &self.database_url {
            all.extend(["--database-url", url.as_str()]);
        }
        all.extend_from_slice(args);
        all
    }

    pub fn kiln(&self, args: &[&str]) -> Output {
        self.ws.kiln(&self.args(args))
    }

    /// `kiln token create`: the token printed on stdout.
    pub fn token(&self, name: &str, claims: &[&str], roles: &[&str]) -> String {
        let claims = claims.join(",");
        let roles = roles.join(",");
        let mut args = vec!["token", "create", "--name", name];
        if !claims.is_empty() {
            args.extend(["--claims", &claims]);
        }
        if !roles.is_empty() {
            args.extend(["--roles", &roles]);
        }
        let out = self.kiln(&args);
        assert!(
            out.status.success(),
            "kiln {args:?} failed: {}",
            text(&out.stderr)
        );
        let token = text(&out.stdout).trim().to_owned();
        assert!(token.starts_with("kiln_"), "not a token: {token:?}");
        token
    }

    pub fn marker(&self) -> String {
        self.ws.root().display().to_string()
    }

    /// Start `kiln serve` on a free port and wait until it answers.
    pub fn serve(&self) -> Server {
        self.serve_with(&[])
    }

    /// `serve` with extra `kiln serve` flags (e.g. short timeouts).
    pub fn serve_with(&self, extra: &[&str]) -> Server {
        let mut last = String::new();
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let addr_s = addr.to_string();
            let log = self.ws.root().join(format!("serve-{port}.log"));
            let file = std::fs::File::create(&log).unwrap();
            let mut args = vec!["serve", "--addr", &addr_s, "--kill-grace-secs", "2"];
            args.extend_from_slice(extra);
            let child = self
                .ws
                .command(&self.args(&args))
                .stdout(Stdio::null())
                .stderr(file)
                .spawn()
                .unwrap();
            let mut server = Server {
                child: Some(child),
                addr,
                log,
            };
            match server.wait_ready(Duration::from_secs(120)) {
                Ok(()) => return server,
                Err(e) => {
                    last = e;
                    server.kill();
                }
            }
        }
        panic!("kiln serve did not start: {last}");
    }
}

/// A running `kiln serve`; killed (SIGKILL) and reaped on drop, even when a test panics.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Server {
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(format!("kiln serve exited ({status}): {}", self.log_text()));
            }
            if let Ok(r) = request(
                self.addr,
                "GET",
                "/api/v1/openapi.json",
                &[],
                None,
                Duration::from_secs(5),
            ) && r.status == 200
            {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(format!("no answer after {timeout:?}: {}", self.log_text()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL the server (its supervised programs live on) and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits (at most `secs`) for the server to end; its exit status.
    pub fn terminate(&mut self, secs: u64) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("the server runs");
        crate::common::kill(child.id(), "TERM");
        self.wait_exit(secs, "after SIGTERM")
    }

    /// Waits (at most `secs`) for the server to end on its own; its exit status. `after`: what
    /// should have ended it, for the failure message.
    pub fn wait_exit(&mut self, secs: u64, after: &str) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("the server runs");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "kiln serve still runs {secs}s {after}: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// A request with an optional bearer token and JSON body.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Resp {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = Vec::new();
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
        if bytes.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        self.send(method, path, &headers, bytes.as_deref())
    }

    /// A request with these headers and body.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        request(
            self.addr,
            method,
            path,
            headers,
            body,
            Duration::from_secs(150),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}\nserver log:\n{}", self.log_text()))
    }

    /// A request written by hand ([`raw_request`]), for what no well-behaved client sends.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        raw_request(
            self.addr,
            method,
            path,
            headers,
            body,
            Duration::from_secs(150),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}\nserver log:\n{}", self.log_text()))
    }

    pub fn get(&self, path: &str, token: &str) -> Resp {
        self.call("GET", path, Some(token), None)
    }

    pub fn post(&self, path: &str, token: &str, body: &Value) -> Resp {
        self.call("POST", path, Some(token), Some(body))
    }

    /// Follow `path` as server-sent events.
    pub fn sse(&self, path: &str, token: &str, last_event_id: Option<&str>) -> Sse {
        let auth = format!("Bearer {token}");
        let mut headers = vec![("Authorization", auth.as_str())];
        if let Some(id) = last_event_id {
            headers.push(("Last-Event-ID", id));
        }
        sse(self.addr, path, &headers, Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("SSE GET {path}: {e}\nserver log:\n{}", self.log_text()))
    }

    /// Poll `GET /runs/{id}` until the run is finished; returns it.
    pub fn wait_run(&self, id: &str, token: &str, secs: u64) -> Value {
        let start = Instant::now();
        loop {
            // Long poll: the server answers as soon as the run has ended.
            let r = self.get(&format!("/api/v1/runs/{id}?wait=5"), token);
            assert_eq!(r.status, 200, "GET /runs/{id}?wait=5: {}", r.text());
            let run = r.json();
            let status = run["status"].as_str().unwrap_or_default().to_owned();
            if matches!(status.as_str(), "succeeded" | "failed" | "cancelled") {
                return run;
            }
            assert!(
                start.elapsed().as_secs() < secs,
                "run {id} still {status} after {secs}s: {run}\nserver log:\n{}",
                self.log_text()
            );
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
