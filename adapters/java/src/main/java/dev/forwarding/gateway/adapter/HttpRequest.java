package dev.forwarding.gateway.adapter;

import forwarding.v1.Forwarding.ForwardingReq;
import java.io.IOException;
import java.io.InputStream;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Locale;
import java.util.function.Supplier;

/**
 * The HTTP request as the gateway received it, in the shape of {@code HttpServletRequest}: raw
 * path and query (percent-encoding untouched), headers in order with duplicates, the body as an
 * {@link InputStream}, trailers once the body is read.
 */
public final class HttpRequest {
  private final ForwardingReq req;
  private final List<Field> headers;
  private final InputStream body;
  private final Supplier<List<Field>> trailers;
  private final Call call;

  HttpRequest(ForwardingReq req, InputStream body, Supplier<List<Field>> trailers, Call call) {
    this.req = req;
    this.headers = Conversions.fields(req.getHeadersList());
    this.body = body;
    this.trailers = trailers;
    this.call = call;
  }

  /** The method exactly as received ("GET", "POST" or any extension token). */
  public String getMethod() {
    return req.getMethod();
  }

  /** The raw path without the query, percent-encoding untouched ("/orders/a%2Fb"). */
  public String getRequestURI() {
    return req.getPath();
  }

  /**
   * The raw query without the '?': {@code null} when the target had no '?', "" for a bare '?'
   * (as {@code HttpServletRequest.getQueryString}).
   */
  public String getQueryString() {
    return req.getHasQuery() ? req.getQuery() : null;
  }

  /** "http" or "https", as the client spoke to the gateway. */
  public String getScheme() {
    return req.getScheme();
  }

  /** The authority (host[:port]) the client addressed. */
  public String getAuthority() {
    return req.getAuthority();
  }

  /** Every header field, in order, duplicates kept. */
  public List<Field> getFields() {
    return headers;
  }

  /** The first value of the header {@code name} (any case), or {@code null}. */
  public String getHeader(String name) {
    String n = name.toLowerCase(Locale.ROOT);
    for (Field f : headers) {
      if (f.name().equals(n)) {
        return f.value();
      }
    }
    return null;
  }

  /** Every value of the header {@code name} (any case), in order. */
  public List<String> getHeaders(String name) {
    String n = name.toLowerCase(Locale.ROOT);
    List<String> out = new ArrayList<>();
    for (Field f : headers) {
      if (f.name().equals(n)) {
        out.add(f.value());
      }
    }
    return out;
  }

  /** The distinct header names, in the order of their first appearance. */
  public List<String> getHeaderNames() {
    LinkedHashSet<String> names = new LinkedHashSet<>();
    for (Field f : headers) {
      names.add(f.name());
    }
    return List.copyOf(names);
  }

  /** The request body. On {@code Stream} it yields chunks as the gateway sends them. */
  public InputStream getInputStream() {
    return body;
  }

  /** Reads the whole body (a convenience for small bodies). */
  public byte[] readAllBytes() throws IOException {
    return body.readAllBytes();
  }

  /**
   * The request trailers, in order: ready once the body has been read to its end (as {@code
   * HttpServletRequest.getTrailerFields}); empty before.
   */
  public List<Field> getTrailerFields() {
    List<Field> t = trailers.get();
    return t == null ? Collections.emptyList() : t;
  }

  /** Milliseconds the gateway gives this request, measured when it sent it; 0 for none. */
  public long getDeadlineMs() {
    return req.getContext().getDeadlineMs();
  }

  /** The request id (also in the {@code x-request-id} header). */
  public String getRequestId() {
    return req.getContext().getRequestId();
  }

  /** Whether the call was cancelled (client gone, deadline passed): stop working when it is. */
  public boolean isCancelled() {
    return call.isCancelled();
  }

  /** Whether this exchange arrived on {@code Stream} (a response flush sends a frame). */
  public boolean isStreaming() {
    return call.streaming();
  }

  /** The message as received, for what the accessors above do not show (context, version). */
  public ForwardingReq raw() {
    return req;
  }
}
