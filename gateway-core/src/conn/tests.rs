use super::*;

/// Feeds `chunks` one read at a time; returns the state.
fn scan(chunks: &[&[u8]]) -> Arc<ConnState> {
    let state = ConnState::new();
    let mut s = Scan::new(64 * 1024);
    for c in chunks {
        s.feed(c, &state);
    }
    state
}

/// Feeds `raw` split at every position, byte by byte too: the verdict must
/// not depend on how reads split the stream.
fn verdicts(raw: &[u8]) -> Vec<Option<(u64, ErrorKind)>> {
    let mut out = vec![];
    for i in 0..=raw.len() {
        let st = scan(&[&raw[..i], &raw[i..]]);
        out.push(st.refusal.get().map(|r| (r.request, r.error.kind)));
    }
    let bytes: Vec<&[u8]> = raw.chunks(1).collect();
    let st = scan(&bytes);
    out.push(st.refusal.get().map(|r| (r.request, r.error.kind)));
    out
}

fn verdict(raw: &[u8]) -> Option<(u64, ErrorKind)> {
    let v = verdicts(raw);
    assert!(v.windows(2).all(|w| w[0] == w[1]), "split-dependent: {v:?}");
    v[0]
}

#[test]
fn clean_pipelines_pass() {
    let raw = b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n\
        POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
        POST /y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n\
        PUT /z HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(verdict(raw), None);
}

#[test]
fn ambiguous_framing_is_pinned_to_its_request() {
    let first = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".as_slice();
    let cases: &[(&[u8], ErrorKind)] = &[
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            ErrorKind::BadRequestFraming,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            ErrorKind::BadRequestFraming,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            ErrorKind::BadRequestFraming,
        ),
        (b"GET / HTTP/1.1\nHost: a\r\n\r\n", ErrorKind::BadRequestFraming),
        (b"GET / HTTP/1.1\r\nHost: a\n\n", ErrorKind::BadRequestFraming),
        (b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", ErrorKind::BadRequest),
    ];
    for (raw, kind) in cases {
        assert_eq!(
            verdict(raw),
            Some((0, *kind)),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
        let two = [first, raw].concat();
        assert_eq!(
            verdict(&two),
            Some((1, *kind)),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn bodies_are_skipped_not_scanned() {
    // A body that looks like a smuggled head is data, not a request.
    let body = b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n";
    let head = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len());
    let raw = [head.as_bytes(), body].concat();
    assert_eq!(verdict(&raw), None);
    // ...and what follows the body is the next request.
    let raw = [&raw[..], body].concat();
    assert_eq!(verdict(&raw), Some((1, ErrorKind::BadRequestFraming)));
}

#[test]
fn broken_chunks_refuse_what_follows() {
    let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
    assert_eq!(verdict(raw), Some((1, ErrorKind::BadRequestFraming)));
    let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxx\r\n";
    assert_eq!(verdict(raw), Some((1, ErrorKind::BadRequestFraming)));
    let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\nx\r\n";
    assert_eq!(verdict(raw), Some((0, ErrorKind::BadRequestFraming)));
}

#[test]
fn upgrades_stop_the_scan() {
    let raw =
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x05hello\n\n";
    assert_eq!(verdict(raw), None);
}

#[test]
fn greeting_needs_a_byte_or_the_whole_h2_preface_and_a_frame() {
    assert!(!scan(&[]).greeted());
    assert!(scan(&[b"G"]).greeted());
    // "P" could be either: an HTTP/1.1 POST or the h2 preface.
    assert!(!scan(&[b"P"]).greeted());
    assert!(scan(&[b"PO"]).greeted());
    assert!(!scan(&[PREFACE]).greeted());
    let settings = [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
    assert!(!scan(&[PREFACE, &settings[..14]]).greeted());
    assert!(scan(&[PREFACE, &settings]).greeted());
    // An HTTP/1.1 request that happens to start like the preface.
    let st = scan(&[b"PRI * HTTP/1.1\r\nHost: a\r\n\r\n"]);
    assert!(st.greeted());
    assert!(st.refusal.get().is_none());
}

#[test]
fn in_flight_tracks_idleness() {
    let st = ConnState::new();
    let (refused, g1) = st.begin_request();
    assert!(refused.is_none());
    let (_, g2) = st.begin_request();
    assert_eq!(st.in_flight(), 2);
    drop(g1);
    drop(g2);
    assert_eq!(st.in_flight(), 0);
    assert!(st.idle_since() >= st.started());
}
