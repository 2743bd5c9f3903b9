//! A TCP proxy for HTTP/1.1 on loopback that injects faults into PUT
//! requests: it cuts a request body short, or lets the request land and
//! drops the response.
//!
//! Include it with `#[path = "common/proxy.rs"] mod proxy;`. It runs on std
//! threads of its own, never on the caller's runtime, so a test may block
//! on it or drive it from any runtime.
//!
//! The client-to-server stream is parsed into requests (headers, then a
//! `Content-Length` or chunked body), so a fault applies to the next request
//! that starts with `PUT `, also on a kept-alive connection. A fault fires
//! once, and the plan goes back to [`Fault::Pass`]. Responses are copied
//! as they come, except the one a [`Fault::DropResponse`] swallows.
//!
//! Not handled: pipelined requests (a client that sends its next request
//! before the response to the last one; hyper and reqwest do not), and
//! `Expect: 100-continue` with a dropped response (the `100 Continue` is
//! swallowed too, so such a client waits for it until its own timeout).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Bytes read from a socket at a time.
const BUFFER_SIZE: usize = 64 * 1024;
/// A request or response head longer than this is not parsed: the rest of
/// the connection is copied blindly.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How long a swallowed response may take to arrive.
const DISCARD_TIMEOUT: Duration = Duration::from_secs(60);

/// What the proxy does to the next PUT request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything both ways.
    Pass,
    /// Forward only the first `after` bytes of the next PUT request (head
    /// and body counted together, from the request's first byte), then shut
    /// down both sockets: the server sees the request end early, the client
    /// sees its connection fail. `after` is cut down to the request's
    /// length minus one, so the server never gets the whole request.
    CutRequestBody {
        /// Bytes of the request that reach the server.
        after: usize,
    },
    /// Forward the next PUT request whole, read and discard the server's
    /// response to it, then close the client's connection without a byte
    /// of it: the write landed, and the client never learns. The client
    /// sees the error only after the server has answered.
    DropResponse,
}

/// A running proxy. Dropping it stops accepting and shuts down the open
/// connections (best effort: their threads end on their own soon after).
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: SocketAddr,
    fault: Mutex<Fault>,
    cuts: AtomicUsize,
    drops: AtomicUsize,
    accepted: AtomicUsize,
    stop: AtomicBool,
    next_id: AtomicU64,
    /// The open connections' sockets (client, upstream), to shut down on
    /// drop. An entry leaves with its connection, so that no clone keeps a
    /// closed connection's socket open.
    live: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
}

impl Shared {
    /// The fault for a request that starts with `method`: a PUT takes the
    /// armed fault, which fires (and is counted) now.
    fn take_fault(&self, method: &[u8]) -> Fault {
        if method != b"PUT" {
            return Fault::Pass;
        }
        let mut plan = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        let fault = std::mem::replace(&mut *plan, Fault::Pass);
        match fault {
            Fault::Pass => {}
            Fault::CutRequestBody { .. } => {
                self.cuts.fetch_add(1, Ordering::SeqCst);
            }
            Fault::DropResponse => {
                self.drops.fetch_add(1, Ordering::SeqCst);
            }
        }
        fault
    }
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards each connection to a new
    /// connection to `upstream`, with [`Fault::Pass`].
    ///
    /// # Panics
    ///
    /// If it cannot listen.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("proxy listen");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream,
            fault: Mutex::new(Fault::Pass),
            cuts: AtomicUsize::new(0),
            drops: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("proxy-accept-{}", addr.port()))
                .spawn(move || accept_loop(listener, shared))
                .expect("proxy thread")
        };
        Proxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The proxy's own address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the proxy as an endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Arms `fault` for the next PUT request on any connection (replacing
    /// one that has not fired yet), or disarms with [`Fault::Pass`].
    pub fn set(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
    }

    /// The fault still armed: [`Fault::Pass`] once it has fired.
    pub fn fault(&self) -> Fault {
        *self.shared.fault.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many faults have fired, of both kinds.
    pub fn fired(&self) -> usize {
        self.fired_cuts() + self.fired_drops()
    }

    /// How many times [`Fault::CutRequestBody`] has fired.
    pub fn fired_cuts(&self) -> usize {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// How many times [`Fault::DropResponse`] has fired.
    pub fn fired_drops(&self) -> usize {
        self.shared.drops.load(Ordering::SeqCst)
    }

    /// How many client connections the proxy has accepted.
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the acceptor, which sees `stop` and returns.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let live = self.shared.live.lock().unwrap_or_else(|e| e.into_inner());
        for (client, upstream) in live.values() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let client = match accepted {
            Ok((client, _)) => client,
            Err(_) => {
                // EMFILE and the like: wait for a connection to close.
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        let shared = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name(format!("proxy-conn-{id}"))
            .spawn(move || serve(shared, id, client));
        if spawned.is_err() {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// State one connection's two threads share.
struct Conn {
    /// Set (before the PUT's first byte goes upstream) when the response
    /// to come must be swallowed.
    discard_response: AtomicBool,
}

/// One client connection: this thread carries requests upstream, a second
/// one carries responses back.
fn serve(shared: Arc<Shared>, id: u64, client: TcpStream) {
    let Ok(upstream) = TcpStream::connect(shared.upstream) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (Ok(client_w), Ok(upstream_r), Ok(client_k), Ok(upstream_k)) = (
        client.try_clone(),
        upstream.try_clone(),
        client.try_clone(),
        upstream.try_clone(),
    ) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    {
        let mut live = shared.live.lock().unwrap_or_else(|e| e.into_inner());
        if shared.stop.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
            return;
        }
        live.insert(id, (client_k, upstream_k));
    }
    let conn = Arc::new(Conn {
        discard_response: AtomicBool::new(false),
    });
    let responses = {
        let conn = Arc::clone(&conn);
        thread::Builder::new()
            .name(format!("proxy-resp-{id}"))
            .spawn(move || pump_responses(upstream_r, client_w, &conn))
    };
    match responses {
        Ok(responses) => {
            pump_requests(client, upstream, &shared, &conn);
            let _ = responses.join();
        }
        Err(_) => {
            let _ = client.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
        }
    }
    shared
        .live
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
}

/// Bytes read from a socket and not yet consumed.
struct Input {
    src: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Input {
    fn new(src: TcpStream) -> Input {
        Input {
            src,
            buf: Vec::with_capacity(BUFFER_SIZE),
            eof: false,
        }
    }

    /// Reads once more; returns false at EOF (or on an error, which ends
    /// the connection the same way).
    fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let mut chunk = [0u8; BUFFER_SIZE];
        match self.src.read(&mut chunk) {
            Ok(0) | Err(_) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The length of the buffered bytes up to and including the first
    /// `needle`, reading more until it shows up. None at EOF, or when it has
    /// not shown up within `limit` bytes.
    fn until(&mut self, needle: &[u8], limit: usize) -> Option<usize> {
        let mut searched: usize = 0;
        loop {
            let from = searched.saturating_sub(needle.len() - 1);
            if let Some(i) = find(&self.buf[from..], needle) {
                return Some(from + i + needle.len());
            }
            searched = self.buf.len();
            if searched > limit || !self.fill() {
                return None;
            }
        }
    }

    /// Takes the first `n` buffered bytes.
    fn take(&mut self, n: usize) -> Vec<u8> {
        self.buf.drain(..n).collect()
    }

    /// Takes up to `max` bytes, reading if none are buffered; empty at EOF.
    fn take_up_to(&mut self, max: usize) -> Vec<u8> {
        if self.buf.is_empty() && !self.fill() {
            return Vec::new();
        }
        let n = self.buf.len().min(max);
        self.take(n)
    }
}

/// Where a request's bytes go: upstream, all of them, or (for a cut) only
/// the first `budget`.
struct Sender<'a> {
    upstream: &'a mut TcpStream,
    budget: Option<usize>,
    sent: usize,
}

/// What a send ended in.
#[derive(PartialEq, Eq)]
enum Sent {
    Ok,
    /// The budget ran out, or upstream failed: stop.
    Stop,
}

impl Sender<'_> {
    /// Sends `bytes`; `last` says they end the request, which a cut never
    /// lets through whole.
    fn send(&mut self, bytes: &[u8], last: bool) -> Sent {
        let mut n = bytes.len();
        if let Some(budget) = self.budget {
            let mut limit = budget;
            if last {
                limit = limit.min((self.sent + bytes.len()).saturating_sub(1));
            }
            n = n.min(limit.saturating_sub(self.sent));
        }
        if self.upstream.write_all(&bytes[..n]).is_err() {
            return Sent::Stop;
        }
        self.sent += n;
        if n < bytes.len() {
            Sent::Stop
        } else {
            Sent::Ok
        }
    }
}

/// The head of a request or response, as far as framing needs it.
struct Head {
    /// The request's method, or the response's status code.
    first: Vec<u8>,
    second: Vec<u8>,
    content_length: Option<usize>,
    chunked: bool,
}

fn parse_head(head: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut start = lines.next()?.split(' ');
    let first = start.next()?.as_bytes().to_vec();
    let second = start.next().unwrap_or("").as_bytes().to_vec();
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse().ok()?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    Some(Head {
        first,
        second,
        content_length,
        chunked,
    })
}

/// Client to server: request by request, applying the fault plan to each
/// PUT.
fn pump_requests(client: TcpStream, mut upstream: TcpStream, shared: &Shared, conn: &Conn) {
    let mut input = Input::new(client);
    loop {
        let Some(head_len) = input.until(b"\r\n\r\n", MAX_HEAD_BYTES) else {
            // EOF between requests (or within a head), or a head too long
            // to parse: forward what there is and the rest as it comes.
            copy_rest(&mut input, &mut upstream);
            return;
        };
        let Some(head) = parse_head(&input.buf[..head_len]) else {
            copy_rest(&mut input, &mut upstream);
            return;
        };
        let fault = shared.take_fault(&head.first);
        if fault == Fault::DropResponse {
            conn.discard_response.store(true, Ordering::SeqCst);
        }
        let budget = match fault {
            Fault::CutRequestBody { after } => Some(after),
            _ => None,
        };
        let mut sender = Sender {
            upstream: &mut upstream,
            budget,
            sent: 0,
        };
        let head_bytes = input.take(head_len);
        let body_len = if head.chunked {
            None
        } else {
            Some(head.content_length.unwrap_or(0))
        };
        let mut ok = sender.send(&head_bytes, body_len == Some(0)) == Sent::Ok;
        if ok {
            ok = match body_len {
                Some(n) => forward_exact(&mut input, &mut sender, n, true),
                None => forward_chunked(&mut input, &mut sender),
            };
        }
        if !ok || budget.is_some() {
            // A cut (here whatever the budget, as the last byte is always
            // held back), a client that ended mid-request, or a dead
            // upstream: the connection ends here, abruptly.
            let _ = input.src.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
            return;
        }
        if fault == Fault::DropResponse {
            // The response thread swallows the response and closes both
            // sockets; nothing more goes upstream.
            return;
        }
    }
}

/// Forwards the next `n` bytes; `last` says they end the request. False if
/// the client ended first or the send stopped.
fn forward_exact(input: &mut Input, sender: &mut Sender<'_>, n: usize, last: bool) -> bool {
    let mut left = n;
    while left > 0 {
        let piece = input.take_up_to(left);
        if piece.is_empty() {
            return false;
        }
        left -= piece.len();
        if sender.send(&piece, last && left == 0) == Sent::Stop {
            return false;
        }
    }
    true
}

/// Forwards a chunked body up to and including its trailer's empty line.
fn forward_chunked(input: &mut Input, sender: &mut Sender<'_>) -> bool {
    loop {
        let Some(line_len) = input.until(b"\r\n", MAX_HEAD_BYTES) else {
            return false;
        };
        let line = input.take(line_len);
        let size = std::str::from_utf8(&line)
            .ok()
            .and_then(|l| l.trim_end().split(';').next())
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let Some(size) = size else {
            return false;
        };
        if sender.send(&line, false) == Sent::Stop {
            return false;
        }
        if size == 0 {
            // Trailer fields, then the empty line that ends the request.
            loop {
                let Some(line_len) = input.until(b"\r\n", MAX_HEAD_BYTES) else {
                    return false;
                };
                let line = input.take(line_len);
                let end = line == b"\r\n";
                if sender.send(&line, end) == Sent::Stop {
                    return false;
                }
                if end {
                    return true;
                }
            }
        }
        // The chunk's data and its CRLF.
        if !forward_exact(input, sender, size + 2, false) {
            return false;
        }
    }
}

/// Forwards the buffered bytes and then everything until EOF, then passes
/// the EOF on.
fn copy_rest(input: &mut Input, upstream: &mut TcpStream) {
    loop {
        let piece = input.take_up_to(BUFFER_SIZE);
        if piece.is_empty() || upstream.write_all(&piece).is_err() {
            break;
        }
    }
    let _ = upstream.shutdown(Shutdown::Write);
}

/// Server to client: a plain copy, except for a response to swallow.
fn pump_responses(upstream: TcpStream, mut client: TcpStream, conn: &Conn) {
    let mut input = Input::new(upstream);
    loop {
        if !input.fill() {
            // The server closed: pass the EOF on, and let the client close.
            let _ = client.shutdown(Shutdown::Write);
            return;
        }
        // The flag is set before the PUT's first byte goes upstream, and
        // (with no pipelining) all of the previous response has been
        // written to the client before the client sent the PUT: whatever
        // arrives now belongs to the PUT's response.
        if conn.discard_response.load(Ordering::SeqCst) {
            let _ = input.src.set_read_timeout(Some(DISCARD_TIMEOUT));
            discard_response(&mut input);
            let _ = client.shutdown(Shutdown::Both);
            let _ = input.src.shutdown(Shutdown::Both);
            return;
        }
        let bytes = std::mem::take(&mut input.buf);
        if client.write_all(&bytes).is_err() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = input.src.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// Reads one whole response (after any `1xx` interim ones) and drops it.
fn discard_response(input: &mut Input) {
    loop {
        let Some(head_len) = input.until(b"\r\n\r\n", MAX_HEAD_BYTES) else {
            return;
        };
        let head = parse_head(&input.buf[..head_len]);
        input.take(head_len);
        let Some(head) = head else {
            return;
        };
        if head.second.starts_with(b"1") {
            continue;
        }
        if head.chunked {
            discard_chunked(input);
        } else if let Some(n) = head.content_length {
            let mut left = n;
            while left > 0 {
                let piece = input.take_up_to(left);
                if piece.is_empty() {
                    return;
                }
                left -= piece.len();
            }
        } else if head.second != b"204" && head.second != b"304" {
            // Delimited by the server closing.
            while !input.take_up_to(BUFFER_SIZE).is_empty() {}
        }
        return;
    }
}

fn discard_chunked(input: &mut Input) {
    loop {
        let Some(line_len) = input.until(b"\r\n", MAX_HEAD_BYTES) else {
            return;
        };
        let line = input.take(line_len);
        let size = std::str::from_utf8(&line)
            .ok()
            .and_then(|l| l.trim_end().split(';').next())
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        match size {
            None => return,
            Some(0) => {
                while let Some(line_len) = input.until(b"\r\n", MAX_HEAD_BYTES) {
                    if input.take(line_len) == b"\r\n" {
                        return;
                    }
                }
                return;
            }
            Some(size) => {
                let mut left = size + 2;
                while left > 0 {
                    let piece = input.take_up_to(left);
                    if piece.is_empty() {
                        return;
                    }
                    left -= piece.len();
                }
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
