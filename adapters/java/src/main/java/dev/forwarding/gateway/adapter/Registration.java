package dev.forwarding.gateway.adapter;

import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest.BodyPublishers;
import java.net.http.HttpResponse.BodyHandlers;
import java.time.Duration;
import java.util.List;
import java.util.logging.Level;
import java.util.logging.Logger;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Keeps one registration alive through the gateway's HTTP JSON registration API
 * (openapi/registry.v1.yaml): register (retrying with backoff while the gateway is down), renew
 * every third of the lease, register again when a renewal answers 404 (the gateway restarted or
 * the lease ran out), deregister on shutdown.
 */
final class Registration {
  private static final Logger LOG = Logger.getLogger(Registration.class.getName());
  private static final Duration MAX_BACKOFF = Duration.ofSeconds(5);

  /** One route of the registration. */
  record Route(String pathPrefix, boolean stream) {}

  private final URI registry;
  private final String token;
  private final String json;
  private final String service;
  private final HttpClient http =
      HttpClient.newBuilder()
          .version(HttpClient.Version.HTTP_1_1)
          .connectTimeout(Duration.ofSeconds(2))
          .build();
  private volatile String instanceId;
  private volatile boolean stopped;
  private Thread thread;

  Registration(
      URI registry,
      String token,
      String service,
      String instanceId,
      String address,
      List<Route> routes,
      boolean streaming,
      long leaseMs) {
    this.registry = registry;
    this.token = token;
    this.service = service;
    this.instanceId = instanceId;
    StringBuilder b = new StringBuilder("{\"service\":").append(Json.str(service));
    if (instanceId != null && !instanceId.isEmpty()) {
      b.append(",\"instance_id\":").append(Json.str(instanceId));
    }
    b.append(",\"address\":").append(Json.str(address));
    if (!routes.isEmpty()) {
      b.append(",\"routes\":[");
      for (int i = 0; i < routes.size(); i++) {
        Route r = routes.get(i);
        b.append(i == 0 ? "" : ",")
            .append("{\"path_prefix\":")
            .append(Json.str(r.pathPrefix()))
            .append(",\"stream\":")
            .append(r.stream())
            .append('}');
      }
      b.append(']');
    }
    if (leaseMs > 0) {
      b.append(",\"lease_ms\":").append(leaseMs);
    }
    this.json = b.append(",\"streaming\":").append(streaming).append('}').toString();
  }

  private java.net.http.HttpRequest.Builder request(String path) {
    java.net.http.HttpRequest.Builder b =
        java.net.http.HttpRequest.newBuilder(registry.resolve(path)).timeout(Duration.ofSeconds(5));
    if (token != null && !token.isEmpty()) {
      b.header("authorization", "Bearer " + token);
    }
    return b;
  }

  /** Registers once; returns the lease in ms. */
  long register() throws IOException, InterruptedException {
    var resp =
        http.send(
            request("/v1/registrations")
                .header("content-type", "application/json")
                .PUT(BodyPublishers.ofString(json))
                .build(),
            BodyHandlers.ofString());
    if (resp.statusCode() / 100 != 2) {
      throw new RegistrationRefused(resp.statusCode(), resp.body());
    }
    String id = Json.field(resp.body(), "instance_id");
    if (id != null) {
      instanceId = id;
    }
    String lease = Json.field(resp.body(), "lease_ms");
    return lease == null ? 30_000 : Long.parseLong(lease);
  }

  /** Renews; returns the lease, or -1 when the gateway does not know the instance. */
  long renew() throws IOException, InterruptedException {
    var resp =
        http.send(
            request("/v1/registrations/" + path(service) + "/" + path(instanceId) + "/renew")
                .POST(BodyPublishers.noBody())
                .build(),
            BodyHandlers.ofString());
    if (resp.statusCode() == 404) {
      return -1;
    }
    if (resp.statusCode() / 100 != 2) {
      throw new RegistrationRefused(resp.statusCode(), resp.body());
    }
    String lease = Json.field(resp.body(), "lease_ms");
    return lease == null ? 30_000 : Long.parseLong(lease);
  }

  /** Removes the instance; quietly gives up when the gateway cannot be reached. */
  void deregister() {
    stopped = true;
    if (thread != null) {
      thread.interrupt();
    }
    String id = instanceId;
    if (id == null || id.isEmpty()) {
      return;
    }
    try {
      http.send(
          request("/v1/registrations/" + path(service) + "/" + path(id)).DELETE().build(),
          BodyHandlers.discarding());
      LOG.info(() -> "Deregistered " + service + "/" + id + ".");
    } catch (IOException | InterruptedException e) {
      LOG.log(Level.WARNING, "deregistration failed", e);
    }
  }

  /** Starts the keep-alive loop on a daemon thread. */
  void start() {
    thread = new Thread(this::loop, "forwarding-registration");
    thread.setDaemon(true);
    thread.start();
  }

  private void loop() {
    long backoff = 100;
    while (!stopped) {
      long lease;
      try {
        lease = Math.max(300, register());
        backoff = 100;
        LOG.info(() -> "Registered " + service + "/" + instanceId + " with the gateway.");
      } catch (InterruptedException e) {
        return;
      } catch (RegistrationRefused e) {
        LOG.warning("The gateway refused the registration: " + e.getMessage());
        if (!sleep(MAX_BACKOFF.toMillis())) {
          return;
        }
        continue;
      } catch (IOException | RuntimeException e) {
        LOG.fine(() -> "Gateway not reachable; retrying: " + e);
        if (!sleep(backoff + (long) (Math.random() * backoff / 2))) {
          return;
        }
        backoff = Math.min(backoff * 2, MAX_BACKOFF.toMillis());
        continue;
      }
      while (!stopped) {
        if (!sleep(lease / 3)) {
          return;
        }
        try {
          long l = renew();
          if (l < 0) {
            LOG.info("The gateway forgot this instance; registering again.");
            break;
          }
          lease = Math.max(300, l);
        } catch (InterruptedException e) {
          return;
        } catch (IOException | RuntimeException e) {
          // A gateway restarting: keep renewing at a third of the lease; a restarted one
          // answers 404 and the outer loop registers again.
          LOG.fine(() -> "Renewal failed; retrying: " + e);
        }
      }
    }
  }

  private boolean sleep(long ms) {
    try {
      Thread.sleep(ms);
      return !stopped;
    } catch (InterruptedException e) {
      return false;
    }
  }

  private static String path(String s) {
    return java.net.URLEncoder.encode(s, java.nio.charset.StandardCharsets.UTF_8).replace("+", "%20");
  }

  static final class RegistrationRefused extends IOException {
    RegistrationRefused(int status, String body) {
      super("HTTP " + status + ": " + body);
    }
  }

  /** The little JSON this needs: quoting a string, finding a scalar field of a flat answer. */
  static final class Json {
    private Json() {}

    static String str(String s) {
      StringBuilder b = new StringBuilder("\"");
      for (int i = 0; i < s.length(); i++) {
        char c = s.charAt(i);
        switch (c) {
          case '"' -> b.append("\\\"");
          case '\\' -> b.append("\\\\");
          case '\n' -> b.append("\\n");
          case '\r' -> b.append("\\r");
          case '\t' -> b.append("\\t");
          default -> {
            if (c < 0x20) {
              b.append(String.format("\\u%04x", (int) c));
            } else {
              b.append(c);
            }
          }
        }
      }
      return b.append('"').toString();
    }

    static String field(String json, String name) {
      Matcher m =
          Pattern.compile("\"" + Pattern.quote(name) + "\"\\s*:\\s*(\"((?:[^\"\\\\]|\\\\.)*)\"|[0-9]+)")
              .matcher(json);
      if (!m.find()) {
        return null;
      }
      return m.group(2) != null ? m.group(2) : m.group(1);
    }
  }
}
