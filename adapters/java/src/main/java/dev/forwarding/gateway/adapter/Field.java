package dev.forwarding.gateway.adapter;

import java.nio.charset.StandardCharsets;

/**
 * One header or trailer field. The value is kept as the bytes received; {@link #value()} reads
 * them as ISO-8859-1, as the Servlet API does, so every byte (obs-text included) survives the
 * round trip through a {@code String}.
 *
 * @param name lower-case field name
 * @param value the field's bytes as ISO-8859-1 text
 */
public record Field(String name, String value) {
  /** The value's bytes exactly as received. */
  public byte[] valueBytes() {
    return value.getBytes(StandardCharsets.ISO_8859_1);
  }
}
