package dev.forwarding.gateway.conformance;

import dev.forwarding.gateway.adapter.Field;
import dev.forwarding.gateway.adapter.ForwardingServer;
import dev.forwarding.gateway.adapter.Handler;
import dev.forwarding.gateway.adapter.HttpRequest;
import dev.forwarding.gateway.adapter.HttpResponse;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Pattern;

/**
 * The conformance behaviour (proto/proto/forwarding/v1/CONFORMANCE.md) as ordinary handler
 * code: read the request, sleep, write parts and flush them. Nothing here touches gRPC, so what
 * the kit checks is the adapter.
 *
 * <pre>
 * java -cp ... dev.forwarding.gateway.conformance.ConformanceServer [--listen 127.0.0.1:0] [--gateway URL]
 * # READY 127.0.0.1:43117
 * </pre>
 */
public final class ConformanceServer implements Handler {
  private static final Pattern TOKEN = Pattern.compile("[!#$%&'*+\\-.^_`|~0-9A-Za-z]+");
  private static final Pattern ID = Pattern.compile("[A-Za-z0-9._-]{1,64}");
  private static final int MAX_CALLS = 10_000;

  /** The fate of a call made with {@code x-conformance-id}. */
  static final class Record {
    volatile String state = "running";
    volatile long sent;
  }

  private final Map<String, Record> calls =
      new LinkedHashMap<>() {
        @Override
        protected boolean removeEldestEntry(Map.Entry<String, Record> e) {
          return size() > MAX_CALLS;
        }
      };

  private record Controls(
      int status,
      List<String[]> headers,
      List<String[]> trailers,
      Long bodySize,
      long delayMs,
      int chunks,
      long chunkDelayMs,
      String id,
      boolean abort) {}

  @Override
  public void service(HttpRequest req, HttpResponse resp) throws Exception {
    String path = req.getRequestURI();
    if (!path.startsWith("/conformance")) {
      json(resp, 404, "{\"error\":\"not found\"}");
      return;
    }
    if (path.startsWith("/conformance/calls/") && req.getMethod().equals("GET")) {
      String id = path.substring("/conformance/calls/".length());
      Record r;
      synchronized (calls) {
        r = calls.get(id);
      }
      if (r == null) {
        json(resp, 404, "{\"id\":" + str(id) + ",\"state\":\"unknown\",\"body_bytes_sent\":0}");
      } else {
        json(resp, 200, "{\"id\":" + str(id) + ",\"state\":\"" + r.state + "\",\"body_bytes_sent\":" + r.sent + "}");
      }
      return;
    }
    Controls c;
    try {
      c = controls(req);
    } catch (IllegalArgumentException e) {
      json(resp, 400, "{\"error\":" + str(e.getMessage()) + "}");
      return;
    }
    // 1. The whole body, chunk by chunk, and the trailers after it.
    MessageDigest sha = MessageDigest.getInstance("SHA-256");
    long length = 0;
    byte[] buf = new byte[64 * 1024];
    InputStream in = req.getInputStream();
    for (int n; (n = in.read(buf)) >= 0; ) {
      sha.update(buf, 0, n);
      length += n;
    }
    List<Field> trailers = req.getTrailerFields();
    Record rec = null;
    if (c.id() != null) {
      rec = new Record();
      synchronized (calls) {
        calls.put(c.id(), rec);
      }
    }
    try {
      // 2. The delay: a cancellation or the deadline interrupts the sleep.
      if (c.delayMs() > 0) {
        long deadline = req.getDeadlineMs();
        if (deadline > 0 && c.delayMs() >= deadline) {
          Thread.sleep(deadline);
          set(rec, "cancelled");
          json(resp, 504, "{\"error\":\"the deadline passed\"}");
          return;
        }
        Thread.sleep(c.delayMs());
      }
      // 3. The answer.
      resp.setStatus(c.status());
      byte[] content = null;
      long size;
      if (c.bodySize() == null) {
        resp.addHeader("content-type", "application/json");
        content = echo(req, trailers, length, sha.digest()).getBytes(StandardCharsets.UTF_8);
        size = content.length;
      } else {
        size = c.bodySize();
      }
      for (String[] h : c.headers()) {
        resp.addHeader(h[0], h[1]);
      }
      for (String[] t : c.trailers()) {
        resp.addTrailer(t[0], t[1]);
      }
      OutputStream out = resp.getOutputStream();
      int k = c.chunks();
      for (int i = 0; i < k; i++) {
        if (i > 0 && c.chunkDelayMs() > 0) {
          Thread.sleep(c.chunkDelayMs());
        }
        long from = i * size / k;
        long to = (i + 1) * size / k;
        if (to > from) {
          if (content != null) {
            out.write(content, (int) from, (int) (to - from));
          } else {
            writePattern(out, from, to);
          }
        }
        out.flush(); // on Stream: this part is one frame, sent now
        if (rec != null) {
          rec.sent += to - from;
        }
      }
      if (c.abort()) {
        set(rec, "aborted");
        throw new IllegalStateException("aborted as asked (x-conformance-abort)");
      }
      set(rec, "completed");
    } catch (InterruptedException | IOException e) {
      set(rec, "cancelled");
      throw e;
    }
  }

  private static void set(Record rec, String state) {
    if (rec != null) {
      rec.state = state;
    }
  }

  private static void writePattern(OutputStream out, long from, long to) throws IOException {
    byte[] block = new byte[(int) Math.min(64 * 1024, to - from)];
    for (long at = from; at < to; ) {
      int n = (int) Math.min(block.length, to - at);
      for (int j = 0; j < n; j++) {
        block[j] = (byte) ((at + j) % 251);
      }
      out.write(block, 0, n);
      at += n;
    }
  }

  private static String echo(HttpRequest req, List<Field> trailers, long length, byte[] digest) {
    return "{\"method\":" + str(req.getMethod())
        + ",\"path\":" + str(req.getRequestURI())
        + ",\"query\":" + str(req.getQueryString() == null ? "" : req.getQueryString())
        + ",\"has_query\":" + (req.getQueryString() != null)
        + ",\"headers\":" + fields(req.getFields())
        + ",\"trailers\":" + fields(trailers)
        + ",\"body_length\":" + length
        + ",\"body_sha256\":\"" + HexFormat.of().formatHex(digest) + "\""
        + ",\"deadline_ms\":" + req.getDeadlineMs()
        + ",\"request_id\":" + str(req.getRequestId())
        + "}";
  }

  private static String fields(List<Field> fs) {
    StringBuilder b = new StringBuilder("[");
    for (Field f : fs) {
      if (b.length() > 1) {
        b.append(',');
      }
      b.append("{\"name\":").append(str(f.name())).append(",\"value\":\"")
          .append(HexFormat.of().formatHex(f.valueBytes())).append("\"}");
    }
    return b.append(']').toString();
  }

  private static Controls controls(HttpRequest req) {
    long status = number(req, "x-conformance-status", 200);
    if (status < 200 || status > 599) {
      throw new IllegalArgumentException("x-conformance-status: not 200-599");
    }
    long chunks = number(req, "x-conformance-chunks", 1);
    if (chunks < 1 || chunks > 65536) {
      throw new IllegalArgumentException("x-conformance-chunks: not 1-65536");
    }
    String id = req.getHeader("x-conformance-id");
    if (id != null && !ID.matcher(id).matches()) {
      throw new IllegalArgumentException("x-conformance-id: not 1-64 of [A-Za-z0-9._-]");
    }
    String size = req.getHeader("x-conformance-body-size");
    return new Controls(
        (int) status,
        fieldArgs(req, "x-conformance-header"),
        fieldArgs(req, "x-conformance-trailer"),
        size == null ? null : number(req, "x-conformance-body-size", 0),
        number(req, "x-conformance-delay-ms", 0),
        (int) chunks,
        number(req, "x-conformance-chunk-delay-ms", 0),
        id,
        "1".equals(req.getHeader("x-conformance-abort")));
  }

  private static long number(HttpRequest req, String name, long dflt) {
    String v = req.getHeader(name);
    if (v == null) {
      return dflt;
    }
    String s = v.strip();
    if (s.isEmpty() || s.length() > 18 || !s.chars().allMatch(ch -> ch >= '0' && ch <= '9')) {
      throw new IllegalArgumentException(name + ": not a number");
    }
    long n = Long.parseLong(s);
    return n == 0 ? dflt : n;
  }

  private static List<String[]> fieldArgs(HttpRequest req, String control) {
    List<String[]> out = new ArrayList<>();
    for (String v : req.getHeaders(control)) {
      int i = v.indexOf(':');
      if (i < 0 || !TOKEN.matcher(v.substring(0, i)).matches()) {
        throw new IllegalArgumentException(control + ": expected 'name: value'");
      }
      String value = v.substring(i + 1).replaceFirst("^[ \\t]+", "");
      out.add(new String[] {v.substring(0, i).toLowerCase(), value});
    }
    return out;
  }

  private static void json(HttpResponse resp, int status, String body) throws IOException {
    resp.setStatus(status);
    resp.setContentType("application/json");
    resp.write(body);
  }

  static String str(String s) {
    StringBuilder b = new StringBuilder("\"");
    for (int i = 0; i < s.length(); i++) {
      char c = s.charAt(i);
      if (c == '"' || c == '\\') {
        b.append('\\').append(c);
      } else if (c < 0x20) {
        b.append(String.format("\\u%04x", (int) c));
      } else {
        b.append(c);
      }
    }
    return b.append('"').toString();
  }

  /** Serves the behaviour; prints {@code READY host:port} once serving; stops on SIGTERM. */
  public static void main(String[] args) throws Exception {
    String listen = "127.0.0.1:0";
    String gateway = null;
    for (int i = 0; i < args.length; i++) {
      switch (args[i]) {
        case "--listen" -> listen = args[++i];
        case "--gateway" -> gateway = args[++i];
        default -> {
          System.err.println("usage: ConformanceServer [--listen HOST:PORT] [--gateway URL]");
          System.exit(2);
        }
      }
    }
    ForwardingServer server =
        ForwardingServer.builder("conformance-java", new ConformanceServer())
            .listen(listen)
            .gateway(gateway)
            .route("/conformance")
            .build()
            .start();
    System.out.println("READY " + server.address());
    System.out.flush();
    server.awaitSignal();
    System.exit(0);
  }
}
