package dev.forwarding.gateway.adapter;

import com.google.protobuf.ByteString;
import forwarding.v1.Forwarding.ForwardingReq;
import forwarding.v1.Forwarding.Header;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;

/** Checks and conversions between the contract's messages and the adapter's objects. */
final class Conversions {
  private Conversions() {}

  /** A message that cannot be an HTTP request: answered with gRPC INVALID_ARGUMENT. */
  static final class Malformed extends Exception {
    Malformed(String message) {
      super(message);
    }
  }

  /** RFC 9110 tchar. */
  static boolean isToken(String s) {
    if (s.isEmpty()) {
      return false;
    }
    for (int i = 0; i < s.length(); i++) {
      char c = s.charAt(i);
      boolean ok =
          (c >= '0' && c <= '9')
              || (c >= 'a' && c <= 'z')
              || (c >= 'A' && c <= 'Z')
              || "!#$%&'*+-.^_`|~".indexOf(c) >= 0;
      if (!ok) {
        return false;
      }
    }
    return true;
  }

  /** Rejects what no HTTP request can carry, with a message naming it. */
  static void check(ForwardingReq req) throws Malformed {
    if (!isToken(req.getMethod())) {
      throw new Malformed("invalid method " + quote(req.getMethod()) + ": not a token");
    }
    String path = req.getPath();
    if (!path.startsWith("/") && !path.equals("*")) {
      throw new Malformed("invalid path " + quote(path) + ": must start with '/'");
    }
    for (int i = 0; i < path.length(); i++) {
      char c = path.charAt(i);
      if (c <= ' ' || c == 0x7f || c == '#' || c == '?') {
        throw new Malformed("invalid path " + quote(path) + ": character " + (int) c);
      }
    }
    checkFields(req.getHeadersList(), "header");
    checkFields(req.getTrailersList(), "trailer");
    // uint64 on the wire: a value with the top bit set is negative in Java, and no deadline is
    // that far away; whoever sent it meant something else (a signed -1, say).
    if (req.getContext().getDeadlineMs() < 0) {
      throw new Malformed(
          "invalid context.deadline_ms "
              + Long.toUnsignedString(req.getContext().getDeadlineMs())
              + ": negative as a signed number");
    }
  }

  static void checkFields(List<Header> fields, String what) throws Malformed {
    for (Header h : fields) {
      String n = h.getName();
      if (!isToken(n) || !n.equals(n.toLowerCase(Locale.ROOT))) {
        throw new Malformed(what + " " + quote(n) + ": invalid field name (not a lower-case token)");
      }
      ByteString v = h.getValue();
      for (int i = 0; i < v.size(); i++) {
        byte b = v.byteAt(i);
        if (b == '\r' || b == '\n' || b == 0) {
          throw new Malformed(what + " " + quote(n) + ": CR, LF or NUL in the value");
        }
      }
    }
  }

  static List<Field> fields(List<Header> headers) {
    List<Field> out = new ArrayList<>(headers.size());
    for (Header h : headers) {
      out.add(new Field(h.getName(), h.getValue().toString(StandardCharsets.ISO_8859_1)));
    }
    return List.copyOf(out);
  }

  static Header header(Field f) {
    return Header.newBuilder()
        .setName(f.name())
        .setValue(ByteString.copyFrom(f.value(), StandardCharsets.ISO_8859_1))
        .build();
  }

  static List<Header> headers(List<Field> fields) {
    List<Header> out = new ArrayList<>(fields.size());
    for (Field f : fields) {
      out.add(header(f));
    }
    return out;
  }

  /** For a handler's own fields: a bad name is a programming error, not the client's. */
  static String checkName(String name) {
    String n = name.toLowerCase(Locale.ROOT);
    if (!isToken(n)) {
      throw new IllegalArgumentException("field name " + quote(name) + " is not a token");
    }
    return n;
  }

  static String checkValue(String name, String value) {
    for (int i = 0; i < value.length(); i++) {
      char c = value.charAt(i);
      if (c == '\r' || c == '\n' || c == 0 || c > 0xff) {
        throw new IllegalArgumentException(
            "field " + quote(name) + ": value has CR, LF, NUL or a character over U+00FF");
      }
    }
    return value;
  }

  static String quote(String s) {
    StringBuilder b = new StringBuilder("\"");
    for (int i = 0; i < s.length() && i < 200; i++) {
      char c = s.charAt(i);
      if (c < 0x20 || c >= 0x7f) {
        b.append(String.format("\\u%04x", (int) c));
      } else if (c == '"' || c == '\\') {
        b.append('\\').append(c);
      } else {
        b.append(c);
      }
    }
    return b.append('"').toString();
  }
}
