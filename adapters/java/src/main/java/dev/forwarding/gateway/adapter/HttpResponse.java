package dev.forwarding.gateway.adapter;

import com.google.protobuf.ByteString;
import forwarding.v1.Forwarding.ForwardingResp;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;

/**
 * The HTTP answer, in the shape of {@code HttpServletResponse}: status and headers until the
 * response is committed, then the body through {@link #getOutputStream()}, and trailers.
 *
 * <p>On {@code Stream} the first {@code flush()} (or the handler's return) commits the head,
 * and each {@code flush()} sends what was written since as one body frame. Buffered bytes are
 * sent on their own once {@link #FRAME_BYTES} accumulate, so memory stays bounded. On {@code
 * Send} the body is buffered whole and {@code flush()} does nothing.
 */
public final class HttpResponse {
  /** On {@code Stream}, the most bytes buffered before a frame goes out without a flush. */
  public static final int FRAME_BYTES = 1 << 20;

  /** Where a streamed answer goes; implemented by the adapter. */
  interface Sink {
    void head(ForwardingResp head) throws IOException;

    void body(ByteString chunk) throws IOException;
  }

  private final Call call;
  private final Sink sink;
  private int status = 200;
  private final List<Field> headers = new ArrayList<>();
  private final List<Field> trailers = new ArrayList<>();
  private boolean committed;
  private final Body out = new Body();

  HttpResponse(Call call, Sink sink) {
    this.call = call;
    this.sink = sink;
  }

  /** Sets the HTTP status (100-599; 200 by default). Ignored once committed. */
  public void setStatus(int status) {
    if (status < 100 || status > 599) {
      throw new IllegalArgumentException("HTTP status " + status + " is not 100-599");
    }
    if (!committed) {
      this.status = status;
    }
  }

  /** The HTTP status set so far. */
  public int getStatus() {
    return status;
  }

  /** Adds a header field (duplicates kept, in order). Ignored once committed. */
  public void addHeader(String name, String value) {
    if (!committed) {
      headers.add(new Field(Conversions.checkName(name), Conversions.checkValue(name, value)));
    }
  }

  /** Replaces every header {@code name} with this one. Ignored once committed. */
  public void setHeader(String name, String value) {
    if (!committed) {
      String n = Conversions.checkName(name);
      headers.removeIf(f -> f.name().equals(n));
      headers.add(new Field(n, Conversions.checkValue(name, value)));
    }
  }

  /** Sets {@code content-type}. */
  public void setContentType(String type) {
    setHeader("content-type", type);
  }

  /** The header fields set so far. */
  public List<Field> getHeaderFields() {
    return List.copyOf(headers);
  }

  /** Adds a response trailer (sent after the body), in order. */
  public void addTrailer(String name, String value) {
    trailers.add(new Field(Conversions.checkName(name), Conversions.checkValue(name, value)));
  }

  /** Whether the head was sent (status and headers can no longer change). */
  public boolean isCommitted() {
    return committed;
  }

  /** The body. */
  public OutputStream getOutputStream() {
    return out;
  }

  /** Sends what is buffered (on {@code Stream}); commits the head. */
  public void flushBuffer() throws IOException {
    out.flush();
  }

  /** Writes UTF-8 text to the body (a convenience). */
  public void write(String text) throws IOException {
    out.write(text.getBytes(StandardCharsets.UTF_8));
  }

  ForwardingResp head() {
    ForwardingResp.Builder b = ForwardingResp.newBuilder().setStatus(status);
    for (Field f : headers) {
      b.addHeaders(Conversions.header(f));
    }
    return b.build();
  }

  List<Field> trailers() {
    return trailers;
  }

  /** Everything buffered (the whole body on {@code Send}). */
  ByteString takeBuffered() {
    return out.take();
  }

  void commit() throws IOException {
    if (!committed) {
      committed = true;
      sink.head(head());
    }
  }

  String headerValue(String name) {
    for (Field f : headers) {
      if (f.name().equals(name.toLowerCase(Locale.ROOT))) {
        return f.value();
      }
    }
    return null;
  }

  private final class Body extends OutputStream {
    // ByteString.Output hands its full blocks to the ByteString without copying them again:
    // the bytes are copied once from the caller's array, once more only for the last partial
    // block.
    private ByteString.Output buf = ByteString.newOutput();

    @Override
    public void write(int b) throws IOException {
      call.checkOpen();
      buf.write(b);
      spill();
    }

    @Override
    public void write(byte[] b, int off, int len) throws IOException {
      call.checkOpen();
      buf.write(b, off, len);
      spill();
    }

    private void spill() throws IOException {
      if (call.streaming() && buf.size() >= FRAME_BYTES) {
        flush();
      }
    }

    @Override
    public void flush() throws IOException {
      if (!call.streaming()) {
        return;
      }
      call.checkOpen();
      commit();
      if (buf.size() > 0) {
        sink.body(take());
      }
    }

    ByteString take() {
      ByteString s = buf.toByteString();
      buf = ByteString.newOutput();
      return s;
    }
  }
}
