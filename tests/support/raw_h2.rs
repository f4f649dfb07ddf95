//! A bare HTTP/2 client that writes its own frames, so that a test can send an
//! `:authority` no URI type can hold: a unix socket path, raw or percent-encoded, as
//! grpc-go sends it for a bare-path target dialled without `WithAuthority` (the
//! kubelet's plugin manager does). One unary gRPC call per connection.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// What became of the call.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered: the DATA it sent on the stream (gRPC framing included).
    Answered(Vec<u8>),
    /// `RST_STREAM` with this error code (1 is `PROTOCOL_ERROR`).
    Reset(u32),
    /// `GOAWAY` with this error code.
    GoAway(u32),
    /// The connection ended without an answer.
    Closed,
}

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// Calls gRPC method `path` (`/package.Service/Method`) with the encoded `message` on a
/// fresh connection to `socket`, with `:authority` set to `authority` verbatim.
pub async fn grpc_call(
    socket: &Path,
    authority: &str,
    path: &str,
    message: &[u8],
) -> std::io::Result<Outcome> {
    let mut stream = UnixStream::connect(socket).await?;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        literal(&mut block, name, value);
    }
    frame(&mut out, HEADERS, END_HEADERS, 1, &block);
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    frame(&mut out, DATA, END_STREAM, 1, &body);
    stream.write_all(&out).await?;

    let answer = async {
        let mut data = Vec::new();
        loop {
            let mut head = [0u8; 9];
            if stream.read_exact(&mut head).await.is_err() {
                return Ok(Outcome::Closed);
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            if stream.read_exact(&mut payload).await.is_err() {
                return Ok(Outcome::Closed);
            }
            match kind {
                SETTINGS if flags & ACK == 0 => {
                    let mut ack = Vec::new();
                    frame(&mut ack, SETTINGS, ACK, 0, &[]);
                    stream.write_all(&ack).await?;
                }
                PING if flags & ACK == 0 => {
                    let mut pong = Vec::new();
                    frame(&mut pong, PING, ACK, 0, &payload);
                    stream.write_all(&pong).await?;
                }
                RST_STREAM if id == 1 => return Ok(Outcome::Reset(code(&payload))),
                GOAWAY => return Ok(Outcome::GoAway(code(&payload[4.min(len)..]))),
                DATA if id == 1 => {
                    data.extend_from_slice(&payload);
                    if flags & END_STREAM != 0 {
                        return Ok(Outcome::Answered(data));
                    }
                }
                // The trailers (or a trailers-only answer) end the stream.
                HEADERS if id == 1 && flags & END_STREAM != 0 => {
                    return Ok(Outcome::Answered(data));
                }
                _ => {}
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), answer).await {
        Ok(outcome) => outcome,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer within 10 s",
        )),
    }
}

/// grpc-go's `encodeAuthority`: what grpc-go of mid-2023 on (grpc-go#6428) sends as
/// `:authority` for a bare-path target without `WithAuthority`.
pub fn encode_authority(path: &str) -> String {
    const KEEP: &[u8] = b"-_.~!$&'()*+,;=:[]@";
    path.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || KEEP.contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn code(payload: &[u8]) -> u32 {
    payload
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(u32::MAX)
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// HPACK "literal header field without indexing, new name", no Huffman coding.
fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0);
    for s in [name, value] {
        integer(block, s.len());
        block.extend_from_slice(s.as_bytes());
    }
}

/// HPACK integer with a 7-bit prefix (the string length; the Huffman bit is 0).
fn integer(block: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        block.push(n as u8);
        return;
    }
    block.push(127);
    n -= 127;
    while n >= 128 {
        block.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    block.push(n as u8);
}
