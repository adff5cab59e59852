//! The `Send` request on the wire, encoded straight from borrowed data, and
//! the tonic codec that carries it.
//!
//! [`request_to_wire`](super::request_to_wire) builds an owned
//! `ForwardingReq` (a `String` and a `Bytes` per header, a `String` per
//! context field) that prost then encodes. [`EncodedRequest::encode`] writes
//! the same protobuf fields from `&request::Parts`, the trailers and
//! [`RequestMeta`] into one buffer sized exactly in a first pass, with
//! prost's low-level helpers: one allocation for the whole message but the
//! body, which is kept as the `Bytes` it came in and copied once, into the
//! gRPC frame, by [`SendCodec`].
//!
//! A message decodes to exactly what `request_to_wire` gives (tests and the
//! `http_to_wire` fuzz target compare them), but its fields are laid out in
//! pieces so that a retry does not re-encode anything:
//!
//! 1. `head`: fields 1-9 (method ... headers), then
//! 2. `body` (field 10), then
//! 3. the trailers (11), then
//! 4. the context (12): its key and length are written per attempt, then
//!    its fields without `deadline_ms` (encoded once), then `deadline_ms`
//!    (5, the attempt's; left out when 0, as prost does).
//!
//! The context is one occurrence of field 12. Protobuf says a decoder merges
//! repeated occurrences of an embedded message, but not every one does
//! (protobuf.js, under `@grpc/proto-loader`, keeps only the last), so the
//! gateway never relies on it.

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName};
use http::request;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use proto::convert::{split_target, version_to_wire};
use proto::v1::ForwardingResp;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::{
    RequestMeta, ResponseParts, WireField, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO,
    authority, is_hop_by_hop,
};
use crate::error::ForwardError;

// Field numbers of `ForwardingReq` (forwarding.proto).
const PROTOCOL_VERSION: u32 = 1;
const METHOD: u32 = 2;
const SCHEME: u32 = 3;
const AUTHORITY: u32 = 4;
const PATH: u32 = 5;
const QUERY: u32 = 6;
const HAS_QUERY: u32 = 7;
const VERSION: u32 = 8;
const HEADERS: u32 = 9;
const BODY: u32 = 10;
const TRAILERS: u32 = 11;
const CONTEXT: u32 = 12;
// `Header`.
const HEADER_NAME: u32 = 1;
const HEADER_VALUE: u32 = 2;
// `RequestContext`.
const CTX_REQUEST_ID: u32 = 1;
const CTX_CLIENT_ADDRESSES: u32 = 2;
const CTX_TRACEPARENT: u32 = 3;
const CTX_TRACESTATE: u32 = 4;
const CTX_DEADLINE_MS: u32 = 5;
const CTX_GATEWAY_NODE: u32 = 6;
const CTX_SERVICE: u32 = 7;
const CTX_MATCHED_PREFIX: u32 = 8;

/// Where encoded fields go: a byte counter for the sizing pass, then the
/// buffer. One field writer for both keeps the two passes from drifting.
trait Sink {
    fn raw(&mut self, bytes: &[u8]);
    fn varint(&mut self, v: u64);
    fn key(&mut self, tag: u32, wire_type: WireType);
}

/// Counts bytes.
struct Count(usize);

impl Sink for Count {
    fn raw(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
    fn varint(&mut self, v: u64) {
        self.0 += encoded_len_varint(v);
    }
    fn key(&mut self, tag: u32, _: WireType) {
        self.0 += key_len(tag);
    }
}

impl<B: BufMut> Sink for B {
    fn raw(&mut self, bytes: &[u8]) {
        self.put_slice(bytes);
    }
    fn varint(&mut self, v: u64) {
        encode_varint(v, self);
    }
    fn key(&mut self, tag: u32, wire_type: WireType) {
        encode_key(tag, wire_type, self);
    }
}

/// A length-delimited field of `len` bytes, content written by the caller.
fn delimited(s: &mut impl Sink, tag: u32, len: usize) {
    s.key(tag, WireType::LengthDelimited);
    s.varint(len as u64);
}

/// A `string`/`bytes` field; proto3 leaves an empty one out.
fn bytes_field(s: &mut impl Sink, tag: u32, v: &[u8]) {
    if !v.is_empty() {
        delimited(s, tag, v.len());
        s.raw(v);
    }
}

/// A repeated `string` element: written even when empty.
fn repeated_str(s: &mut impl Sink, tag: u32, v: &str) {
    delimited(s, tag, v.len());
    s.raw(v.as_bytes());
}

/// A varint field (`uint32`, `uint64`, `bool`, enum); 0 is left out.
fn varint_field(s: &mut impl Sink, tag: u32, v: u64) {
    if v != 0 {
        s.key(tag, WireType::Varint);
        s.varint(v);
    }
}

/// Length of a `bytes`/`string` field as [`bytes_field`] writes it.
fn bytes_field_len(tag: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(len as u64) + len
    }
}

/// One `Header` element of field `tag`, its value given in pieces.
fn header_pieces<'a, I>(s: &mut impl Sink, tag: u32, name: &str, value: impl Fn() -> I)
where
    I: Iterator<Item = &'a [u8]>,
{
    let value_len: usize = value().map(<[u8]>::len).sum();
    let len = bytes_field_len(HEADER_NAME, name.len()) + bytes_field_len(HEADER_VALUE, value_len);
    delimited(s, tag, len);
    bytes_field(s, HEADER_NAME, name.as_bytes());
    if value_len != 0 {
        delimited(s, HEADER_VALUE, value_len);
        for v in value() {
            s.raw(v);
        }
    }
}

fn header_field(s: &mut impl Sink, tag: u32, name: &str, value: &[u8]) {
    header_pieces(s, tag, name, || std::iter::once(value));
}

/// A short ASCII string on the stack (an address and port: at most 58
/// characters for `[v6%scope]:port`).
struct Stack {
    buf: [u8; 96],
    len: usize,
}

impl Stack {
    fn display(v: impl std::fmt::Display) -> Self {
        let mut s = Stack {
            buf: [0; 96],
            len: 0,
        };
        // Addresses always fit; a failed write would show as a truncated one.
        let _ = write!(s, "{v}");
        s
    }

    /// An IPv4 address, and `:port` if given, as `Display` writes them but
    /// without the formatting machinery (a fifth of the encoder's time).
    fn v4(ip: std::net::Ipv4Addr, port: Option<u16>) -> Self {
        let mut s = Stack {
            buf: [0; 96],
            len: 0,
        };
        for (i, o) in ip.octets().into_iter().enumerate() {
            if i > 0 {
                s.push(b'.');
            }
            s.decimal(o.into());
        }
        if let Some(p) = port {
            s.push(b':');
            s.decimal(p.into());
        }
        s
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn decimal(&mut self, v: u32) {
        let mut digits = [0u8; 10];
        let (mut v, mut n) = (v, 0);
        loop {
            digits[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for d in digits[..n].iter().rev() {
            self.push(*d);
        }
    }
    fn as_str(&self) -> &str {
        // Only whole `&str`s are ever copied in.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Write for Stack {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Whether `name` is listed in a `Connection` field, as `request_to_wire`
/// decides it (its tokens parsed as header names), without building names.
fn named_in_connection(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(name.as_str()))
}

/// Everything `ForwardingReq` needs from the request, borrowed.
struct Fields<'a> {
    parts: &'a request::Parts,
    trailers: Option<&'a HeaderMap>,
    meta: &'a RequestMeta<'a>,
    authority: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    scheme: &'a str,
    fwd_host: &'a [u8],
    peer_ip: Stack,
    peer: Stack,
    traceparent: &'a str,
    tracestate: &'a str,
    /// Bytes of the context ([`Fields::context`]), once known.
    context_len: usize,
    /// Whether the request has a `Connection` field at all (the common
    /// HTTP/2 and keep-alive HTTP/1.1 case has none to look at).
    has_connection: bool,
}

impl<'a> Fields<'a> {
    fn new(
        parts: &'a request::Parts,
        trailers: Option<&'a HeaderMap>,
        meta: &'a RequestMeta<'a>,
    ) -> Result<Self, ForwardError> {
        let authority = authority(parts)?;
        let (path, query) = split_target(&parts.uri);
        let h = &parts.headers;
        let (scheme, fwd_host) =
            super::forwarded_scheme_and_host(parts, authority, meta.trusted_peer);
        let header_str = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let (peer_ip, peer) = match meta.peer {
            std::net::SocketAddr::V4(a) => {
                (Stack::v4(*a.ip(), None), Stack::v4(*a.ip(), Some(a.port())))
            }
            a => (Stack::display(a.ip()), Stack::display(a)),
        };
        let mut f = Fields {
            parts,
            trailers,
            meta,
            authority,
            path,
            query,
            scheme,
            fwd_host,
            peer_ip,
            peer,
            traceparent: meta
                .trace
                .map_or_else(|| header_str("traceparent"), |t| t.traceparent.as_str()),
            tracestate: meta
                .trace
                .map_or_else(|| header_str("tracestate"), |t| t.tracestate.as_str()),
            context_len: 0,
            has_connection: h.contains_key(header::CONNECTION),
        };
        let mut len = Count(0);
        f.context(&mut len);
        f.context_len = len.0;
        Ok(f)
    }

    /// Addresses of a trusted `X-Forwarded-For`, in order.
    fn forwarded_for(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        let h = &self.parts.headers;
        let values = if self.meta.trusted_peer {
            Some(h.get_all(&X_FORWARDED_FOR).iter())
        } else {
            None
        };
        values
            .into_iter()
            .flatten()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(str::trim).filter(|a| !a.is_empty()))
    }

    /// Fields 1-9.
    fn head(&self, s: &mut impl Sink) {
        let p = self.parts;
        varint_field(s, PROTOCOL_VERSION, proto::PROTOCOL_VERSION.into());
        bytes_field(s, METHOD, p.method.as_str().as_bytes());
        bytes_field(s, SCHEME, self.scheme.as_bytes());
        bytes_field(s, AUTHORITY, self.authority.as_bytes());
        bytes_field(s, PATH, self.path.as_bytes());
        bytes_field(s, QUERY, self.query.unwrap_or_default().as_bytes());
        varint_field(s, HAS_QUERY, self.query.is_some().into());
        varint_field(s, VERSION, version_to_wire(p.version) as u64);
        for (name, value) in &p.headers {
            if is_hop_by_hop(name)
                || name == X_FORWARDED_FOR
                || name == X_FORWARDED_PROTO
                || name == X_FORWARDED_HOST
                || name == crate::request_id::HEADER
                || (self.has_connection && named_in_connection(&p.headers, name))
            {
                continue;
            }
            header_field(s, HEADERS, name.as_str(), value.as_bytes());
        }
        let xff = || {
            self.forwarded_for()
                .flat_map(|a| [a.as_bytes(), b", "])
                .chain(std::iter::once(self.peer_ip.as_str().as_bytes()))
        };
        header_pieces(s, HEADERS, "x-forwarded-for", xff);
        header_field(s, HEADERS, "x-forwarded-proto", self.scheme.as_bytes());
        header_field(s, HEADERS, "x-forwarded-host", self.fwd_host);
        header_field(s, HEADERS, "x-request-id", self.meta.request_id.as_bytes());
    }

    /// `RequestContext` without `deadline_ms`.
    fn context(&self, s: &mut impl Sink) {
        let m = self.meta;
        bytes_field(s, CTX_REQUEST_ID, m.request_id.as_bytes());
        for a in self.forwarded_for() {
            repeated_str(s, CTX_CLIENT_ADDRESSES, a);
        }
        repeated_str(s, CTX_CLIENT_ADDRESSES, self.peer.as_str());
        bytes_field(s, CTX_TRACEPARENT, self.traceparent.as_bytes());
        bytes_field(s, CTX_TRACESTATE, self.tracestate.as_bytes());
        bytes_field(s, CTX_GATEWAY_NODE, m.node_id.as_bytes());
        bytes_field(s, CTX_SERVICE, m.service.as_bytes());
        bytes_field(s, CTX_MATCHED_PREFIX, m.matched_prefix.as_bytes());
    }

    /// Field 11, the trailers.
    fn trailers(&self, s: &mut impl Sink) {
        for (name, value) in self.trailers.into_iter().flatten() {
            header_field(s, TRAILERS, name.as_str(), value.as_bytes());
        }
    }
}

/// A `ForwardingReq` encoded once, sent as many times as there are attempts
/// (see the module documentation for its layout).
#[derive(Debug, Clone)]
pub struct EncodedRequest {
    /// Fields 1-9, then 11, then the content of 12 without its key, length
    /// and deadline; `split` is where the body goes, `context` where the
    /// context's content starts.
    fixed: Bytes,
    split: usize,
    context: usize,
    body: Bytes,
}

impl EncodedRequest {
    /// Encodes the request as [`request_to_wire`](super::request_to_wire)
    /// would build it, but for `context.deadline_ms`, which each attempt
    /// adds ([`EncodedRequest::attempt`]).
    pub fn encode(
        parts: &request::Parts,
        body: Bytes,
        trailers: Option<&HeaderMap>,
        meta: &RequestMeta<'_>,
    ) -> Result<Self, ForwardError> {
        let f = Fields::new(parts, trailers, meta)?;
        let mut head = Count(0);
        f.head(&mut head);
        let mut trailers = Count(0);
        f.trailers(&mut trailers);
        let len = head.0 + trailers.0 + f.context_len;
        let mut buf = BytesMut::with_capacity(len);
        f.head(&mut buf);
        f.trailers(&mut buf);
        f.context(&mut buf);
        debug_assert_eq!(buf.len(), len, "sizing and writing agree");
        Ok(EncodedRequest {
            fixed: buf.freeze(),
            split: head.0,
            context: head.0 + trailers.0,
            body,
        })
    }

    /// The message of one attempt: this request with `deadline_ms` (0 for
    /// none). Shares the encoded bytes; copies nothing.
    pub fn attempt(&self, deadline_ms: u64) -> Attempt {
        Attempt {
            req: self.clone(),
            deadline_ms,
        }
    }

    /// The whole message of an attempt with `deadline_ms`, in one buffer
    /// (tests, fuzzing and the allocation benchmark; [`deadline_ms`] gives
    /// the one `request_to_wire` sets).
    pub fn to_bytes(&self, deadline_ms: u64) -> Bytes {
        let a = self.attempt(deadline_ms);
        let mut buf = BytesMut::with_capacity(a.encoded_len());
        a.write(&mut buf);
        buf.freeze()
    }
}

/// `deadline_ms` as `request_to_wire` sets it from [`RequestMeta`].
pub fn deadline_ms(meta: &RequestMeta<'_>) -> u64 {
    meta.deadline
        .map(|d| d.as_millis().max(1) as u64)
        .unwrap_or(0)
}

/// One `Send` attempt's message: an [`EncodedRequest`] and its deadline.
#[derive(Debug, Clone)]
pub struct Attempt {
    req: EncodedRequest,
    deadline_ms: u64,
}

impl Attempt {
    /// Bytes of the context's content, this attempt's deadline included.
    fn context_len(&self) -> usize {
        let deadline = if self.deadline_ms == 0 {
            0
        } else {
            key_len(CTX_DEADLINE_MS) + encoded_len_varint(self.deadline_ms)
        };
        self.req.fixed.len() - self.req.context + deadline
    }

    /// Bytes of the protobuf message.
    pub fn encoded_len(&self) -> usize {
        let r = &self.req;
        let ctx = self.context_len();
        r.context
            + bytes_field_len(BODY, r.body.len())
            + key_len(CONTEXT)
            + encoded_len_varint(ctx as u64)
            + ctx
    }

    /// Writes the message: the body is the one copy.
    fn write(&self, dst: &mut impl BufMut) {
        let r = &self.req;
        dst.put_slice(&r.fixed[..r.split]);
        bytes_field(dst, BODY, &r.body);
        dst.put_slice(&r.fixed[r.split..r.context]);
        delimited(dst, CONTEXT, self.context_len());
        dst.put_slice(&r.fixed[r.context..]);
        if self.deadline_ms != 0 {
            varint_field(dst, CTX_DEADLINE_MS, self.deadline_ms);
        }
    }
}

/// Full path of `ForwardingService.Send`.
pub const SEND_PATH: &str = "/forwarding.v1.ForwardingService/Send";

/// Capacity of the buffer an answer is read into. Typical answers are
/// small (the benchmark's: 64-byte body and `content-type`, ~100 bytes);
/// 1 KiB holds most of them whole and stays within glibc's thread cache
/// (chunks up to 1,032 bytes), where tonic's default 8 KiB goes to the
/// arena (and `malloc_consolidate`). A larger answer grows the buffer as
/// its DATA frames arrive (tonic reserves the message's length once the
/// 5-byte gRPC header is in).
pub const DECODE_BUFFER: usize = 1024;

/// tonic's: the encoder yields after this many bytes. A unary call writes
/// one message, so it only matters for the buffer's growth, which the exact
/// size below avoids.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// The `Send` codec: writes an [`Attempt`] into a buffer of exactly its
/// gRPC frame's size (5-byte header + message: one allocation, whatever the
/// size of the body, instead of 8 KiB grown by doubling), and decodes a
/// `ForwardingResp` into a [`DECODE_BUFFER`]-sized buffer.
#[derive(Debug, Clone, Copy)]
pub struct SendCodec {
    frame_len: usize,
}

impl SendCodec {
    /// A codec for sending `attempt`.
    pub fn for_attempt(attempt: &Attempt) -> Self {
        SendCodec {
            frame_len: tonic::codec::HEADER_SIZE + attempt.encoded_len(),
        }
    }
}

impl Codec for SendCodec {
    type Encode = Attempt;
    type Decode = Answer;
    type Encoder = SendEncoder;
    type Decoder = RespDecoder;

    fn encoder(&mut self) -> SendEncoder {
        SendEncoder {
            frame_len: self.frame_len,
        }
    }

    fn decoder(&mut self) -> RespDecoder {
        RespDecoder
    }
}

/// Writes an [`Attempt`].
#[derive(Debug)]
pub struct SendEncoder {
    frame_len: usize,
}

impl Encoder for SendEncoder {
    type Item = Attempt;
    type Error = Status;

    fn encode(&mut self, item: Attempt, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.write(dst);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(self.frame_len, YIELD_THRESHOLD)
    }
}

/// A backend's answer as decoded by [`decode_response`].
pub type Answer = ResponseParts<RespField>;

/// A header or trailer field of an answer: slices of the received buffer,
/// no copy and no `String` per name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RespField {
    /// Valid UTF-8 (checked when decoded).
    name: Bytes,
    value: Bytes,
}

impl WireField for RespField {
    fn name(&self) -> &str {
        std::str::from_utf8(&self.name).unwrap_or_default()
    }
    fn value(&self) -> &Bytes {
        &self.value
    }
}

impl From<ForwardingResp> for Answer {
    fn from(r: ForwardingResp) -> Self {
        let fields = |l: Vec<proto::v1::Header>| {
            l.into_iter()
                .map(|h| RespField {
                    name: Bytes::from(h.name),
                    value: h.value,
                })
                .collect()
        };
        ResponseParts {
            status: r.status,
            headers: fields(r.headers),
            body: r.body,
            trailers: fields(r.trailers),
        }
    }
}

/// Decodes a `ForwardingResp` from `buf` without copying: the body, names
/// and values are slices of `buf`. Anything the fast path does not expect
/// (a wire type that does not match, a group, a name that is not UTF-8, a
/// truncated message) is decoded again by prost, so that the answer, or the
/// error (INTERNAL with prost's message, as tonic-prost), is exactly prost's.
pub fn decode_response(buf: Bytes) -> Result<Answer, Status> {
    use prost::Message as _;
    match fast_decode(&buf) {
        Some(a) => Ok(a),
        None => ForwardingResp::decode(buf)
            .map(Answer::from)
            .map_err(|e| Status::internal(e.to_string())),
    }
}

/// `ForwardingResp`'s fields, by prost's rules (last scalar wins, repeated
/// fields append, unknown fields skipped); `None` where prost would fail
/// or where the fast path does not follow it.
fn fast_decode(buf: &Bytes) -> Option<Answer> {
    let mut a = Answer::default();
    let mut rest: &[u8] = buf;
    while !rest.is_empty() {
        let (tag, wt) = prost::encoding::decode_key(&mut rest).ok()?;
        match (tag, wt) {
            (1, WireType::Varint) => {
                a.status = prost::encoding::decode_varint(&mut rest).ok()? as u32;
            }
            (2..=4, WireType::LengthDelimited) => {
                let v = delimited_slice(buf, &mut rest)?;
                match tag {
                    2 => a.headers.push(fast_field(v)?),
                    3 => a.body = v,
                    _ => a.trailers.push(fast_field(v)?),
                }
            }
            (1..=4, _) => return None,
            (_, WireType::StartGroup | WireType::EndGroup) => return None,
            (tag, wt) => {
                prost::encoding::skip_field(wt, tag, &mut rest, Default::default()).ok()?;
            }
        }
    }
    Some(a)
}

/// The next length-delimited value of `rest` (a suffix of `buf`), as a
/// slice of `buf`.
fn delimited_slice(buf: &Bytes, rest: &mut &[u8]) -> Option<Bytes> {
    let len = usize::try_from(prost::encoding::decode_varint(rest).ok()?).ok()?;
    if len > rest.len() {
        return None;
    }
    let start = buf.len() - rest.len();
    *rest = &rest[len..];
    Some(buf.slice(start..start + len))
}

/// A `Header` message.
fn fast_field(msg: Bytes) -> Option<RespField> {
    let mut f = RespField::default();
    let mut rest: &[u8] = &msg;
    while !rest.is_empty() {
        let (tag, wt) = prost::encoding::decode_key(&mut rest).ok()?;
        match (tag, wt) {
            (1, WireType::LengthDelimited) => f.name = delimited_slice(&msg, &mut rest)?,
            (2, WireType::LengthDelimited) => f.value = delimited_slice(&msg, &mut rest)?,
            (1 | 2, _) => return None,
            (_, WireType::StartGroup | WireType::EndGroup) => return None,
            (tag, wt) => {
                prost::encoding::skip_field(wt, tag, &mut rest, Default::default()).ok()?;
            }
        }
    }
    std::str::from_utf8(&f.name).ok()?;
    Some(f)
}

/// Decodes a `ForwardingResp` into an [`Answer`].
#[derive(Debug)]
pub struct RespDecoder;

impl Decoder for RespDecoder {
    type Item = Answer;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Answer>, Status> {
        use bytes::Buf as _;
        // tonic's `DecodeBuf` splits this off its buffer: no copy.
        decode_response(src.copy_to_bytes(src.remaining())).map(Some)
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(DECODE_BUFFER, YIELD_THRESHOLD)
    }
}

/// Calls `ForwardingService.Send` with one attempt over any gRPC transport
/// (tonic's `Channel`, or the balancer's own connections), with
/// `grpc-timeout` set to `timeout`. Errors as the generated client's.
pub async fn send<T>(
    channel: T,
    attempt: Attempt,
    timeout: std::time::Duration,
) -> Result<tonic::Response<Answer>, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    grpc.ready().await.map_err(|e| {
        let e: Box<dyn std::error::Error + Send + Sync> = e.into();
        Status::unknown(format!("Service was not ready: {e}"))
    })?;
    let codec = SendCodec::for_attempt(&attempt);
    let mut call = tonic::Request::new(attempt);
    call.set_timeout(timeout);
    grpc.unary(call, http::uri::PathAndQuery::from_static(SEND_PATH), codec)
        .await
}

#[cfg(test)]
mod tests;
