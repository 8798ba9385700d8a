//! Bodies past `max_payload_bytes`: every client reads the 413, including one that
//! writes its whole body before reading (Python's `http.client`, a raw socket).
mod common;

use common::Doubler;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;
use volt_serve::client::Client;
use volt_serve::{EndpointConfig, RunningServer, Server, ServerConfig};

const MIB: usize = 1 << 20;

async fn server(max_payload_bytes: usize) -> RunningServer {
    Server::new(ServerConfig { port: 0, max_payload_bytes, ..ServerConfig::default() })
        .endpoint(EndpointConfig::at("/predict"), Doubler::default())
        .expect("endpoint")
        .bind()
        .await
        .expect("bind")
}

fn connect(addr: SocketAddr) -> TcpStream {
    let socket = TcpStream::connect(addr).expect("connect");
    // Guards against a hang, not speed requirements.
    socket.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    socket.set_write_timeout(Some(Duration::from_secs(60))).expect("timeout");
    socket
}

/// A response read to the end of the connection: status, lower-cased head, body.
struct RawReply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

fn read_reply(socket: TcpStream) -> RawReply {
    parse_reply(Vec::new(), socket)
}

/// Parses `start` (bytes already read) and the rest of the connection as a response.
fn parse_reply(mut bytes: Vec<u8>, mut socket: TcpStream) -> RawReply {
    socket.read_to_end(&mut bytes).expect("read the response");
    let split = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&bytes[..split]).to_lowercase();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    RawReply { status, head, body: bytes[split + 4..].to_vec() }
}

fn assert_413(reply: &RawReply) {
    assert_eq!(reply.status, 413, "{}", reply.head);
    assert!(reply.head.contains("\r\nconnection: close"), "{}", reply.head);
    let v: Value = serde_json::from_slice(&reply.body).expect("a JSON body");
    assert_eq!(v["error"]["code"], 413);
    assert_eq!(v["error"]["message"], "request body is larger than max_payload_bytes = 1048576");
}

/// Writes `head` then `len` bytes of body in 64 KiB pieces: the bytes of body written,
/// and the first write error, if any.
fn write_body(socket: &mut TcpStream, head: &str, len: usize) -> (usize, std::io::Result<()>) {
    if let Err(e) = socket.write_all(head.as_bytes()) {
        return (0, Err(e));
    }
    let piece = vec![b'a'; 64 << 10];
    let mut written = 0;
    while written < len {
        let n = (len - written).min(piece.len());
        if let Err(e) = socket.write_all(&piece[..n]) {
            return (written, Err(e));
        }
        written += n;
    }
    (written, Ok(()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_writes_24_mb_before_reading_gets_the_413() {
    let server = server(MIB).await;
    let addr = server.addr();
    let reply = tokio::task::spawn_blocking(move || {
        let mut socket = connect(addr);
        let len = 24 * MIB;
        let head = format!("POST /predict HTTP/1.1\r\nhost: volt\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n");
        write_body(&mut socket, &head, len).1.expect("the server read the whole body");
        read_reply(socket)
    })
    .await
    .expect("join");
    assert_413(&reply);

    // The same without a Content-Length: the limit is found while reading the chunks.
    let reply = tokio::task::spawn_blocking(move || {
        let mut socket = connect(addr);
        socket
            .write_all(b"POST /predict HTTP/1.1\r\nhost: volt\r\ntransfer-encoding: chunked\r\n\r\n")
            .expect("head");
        let chunk = format!("{:x}\r\n{}\r\n", 64 << 10, "a".repeat(64 << 10));
        for _ in 0..(24 * MIB) / (64 << 10) {
            socket.write_all(chunk.as_bytes()).expect("the server read every chunk");
        }
        socket.write_all(b"0\r\n\r\n").expect("last chunk");
        read_reply(socket)
    })
    .await
    .expect("join");
    assert_413(&reply);
    // Still serving.
    let r = Client::new(server.url()).post("/predict", &json!({"x": 2})).await.expect("request");
    assert_eq!((r.status, r.json()), (200, json!({"y": 4})));
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_past_the_limit_is_answered_at_once_without_reading() {
    let server = server(MIB).await;
    let addr = server.addr();
    let reply = tokio::task::spawn_blocking(move || {
        let mut socket = connect(addr);
        let head = format!(
            "POST /predict HTTP/1.1\r\nhost: volt\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
            24 * MIB
        );
        socket.write_all(head.as_bytes()).expect("head");
        // No body is sent: a server that asks for it (100 Continue) would wait for it.
        let mut first = [0u8; 12];
        socket.read_exact(&mut first).expect("a status line");
        assert_eq!(String::from_utf8_lossy(&first), "HTTP/1.1 413", "the first response");
        parse_reply(first.to_vec(), socket)
    })
    .await
    .expect("join");
    assert_413(&reply);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lingering_after_a_413_is_bounded_in_bytes() {
    let server = server(MIB).await;
    let addr = server.addr();
    // A client that would write 1 GiB is cut off long before the end.
    let written = tokio::task::spawn_blocking(move || {
        let mut socket = connect(addr);
        let len = 1 << 30;
        let head = format!("POST /predict HTTP/1.1\r\nhost: volt\r\ncontent-length: {len}\r\n\r\n");
        write_body(&mut socket, &head, len)
    })
    .await
    .expect("join");
    let (written, result) = written;
    assert!(result.is_err(), "the server read 1 GiB of a body it had refused");
    // It read the 64 MiB it lingers for (the rest fits in the sockets' buffers).
    assert!((64 << 20..96 << 20).contains(&written), "{written} bytes written before the cut");
    let r = Client::new(server.url()).post("/predict", &json!({"x": 3})).await.expect("request");
    assert_eq!((r.status, r.json()), (200, json!({"y": 6})));
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_exactly_max_payload_bytes_is_read_and_one_more_byte_is_not() {
    let server = server(64).await;
    let client = Client::new(server.url());
    let body = |len: usize| {
        let frame = "{\"x\": 5, \"p\": \"\"}".len();
        format!("{{\"x\": 5, \"p\": \"{}\"}}", "a".repeat(len - frame))
    };
    assert_eq!(body(64).len(), 64);
    let r = client.post_raw("/predict", body(64)).await.expect("request");
    assert_eq!((r.status, r.json()), (200, json!({"y": 10})));
    let r = client.post_raw("/predict", body(65)).await.expect("request");
    assert_eq!(r.status, 413, "{}", r.text);
    let r = client.post_raw("/predict", "").await.expect("request");
    assert_eq!(r.status, 400, "an empty body is malformed JSON, not too large: {}", r.text);
    server.shutdown().await.expect("shutdown");
}

const HTTP_CLIENT_SCRIPT: &str = r#"
import http.client, json, sys
conn = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=60)
body = b'{"x": 1, "pad": "' + b"a" * (24 << 20) + b'"}'
conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
r = conn.getresponse()
print(json.dumps({"status": r.status, "connection": r.getheader("Connection"), "body": json.loads(r.read())}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pythons_http_client_reads_the_413_of_a_24_mb_body() {
    let python =
        Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo")).join("../../.python");
    assert!(python.exists(), "{} is missing: run scripts/setup", python.display());
    let server = server(MIB).await;
    let (host, port) = (server.addr().ip().to_string(), server.addr().port().to_string());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .args(["-c", HTTP_CLIENT_SCRIPT, &host, &port])
            .output()
            .expect("run python")
    })
    .await
    .expect("join");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["status"], 413);
    assert_eq!(v["connection"], "close");
    assert_eq!(v["body"]["error"]["message"], "request body is larger than max_payload_bytes = 1048576");
    server.shutdown().await.expect("shutdown");
}
