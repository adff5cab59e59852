package dev.forwarding.gateway.adapter;

import io.grpc.Server;
import io.grpc.health.v1.HealthCheckResponse.ServingStatus;
import io.grpc.netty.shaded.io.grpc.netty.NettyServerBuilder;
import io.grpc.protobuf.services.HealthStatusManager;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.URI;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.logging.Logger;

/**
 * A backend: the {@link ForwardingAdapter} and {@code grpc.health.v1} on one gRPC server, plus
 * the lifecycle of the Rust service-sdk: register with the gateway (address, routes, streaming
 * flag), renew the lease, and on SIGTERM or SIGINT deregister, keep serving for the drain time
 * (500 ms), then stop.
 *
 * <pre>{@code
 * ForwardingServer.builder("hello", (req, resp) -> resp.write("hello\n"))
 *     .gateway("http://127.0.0.1:8090")
 *     .build()
 *     .start()
 *     .awaitSignal();
 * }</pre>
 */
public final class ForwardingServer {
  private static final Logger LOG = Logger.getLogger(ForwardingServer.class.getName());

  private final Builder cfg;
  private final HealthStatusManager health = new HealthStatusManager();
  private Server server;
  private Registration registration;
  private String address;

  private ForwardingServer(Builder cfg) {
    this.cfg = cfg;
  }

  /** A builder for the service {@code service} answered by {@code handler}. */
  public static Builder builder(String service, Handler handler) {
    return new Builder(service, handler);
  }

  /** Binds, serves, and (with a gateway) starts registering. */
  public ForwardingServer start() throws IOException {
    HostPort listen = HostPort.parse(cfg.listen);
    server =
        NettyServerBuilder.forAddress(new InetSocketAddress(listen.host(), listen.port()))
            .addService(new ForwardingAdapter(cfg.handler))
            .addService(health.getHealthService())
            .maxInboundMessageSize(cfg.maxMessageBytes)
            .build()
            .start();
    health.setStatus("forwarding.v1.ForwardingService", ServingStatus.SERVING);
    address =
        cfg.advertise != null ? cfg.advertise : listen.host() + ":" + server.getPort();
    LOG.info(() -> "Serving forwarding.v1 on " + address + ".");
    if (cfg.gateway != null) {
      List<Registration.Route> routes = new ArrayList<>(cfg.routes);
      registration =
          new Registration(
              URI.create(cfg.gateway),
              cfg.token,
              cfg.service,
              cfg.instanceId,
              address,
              routes,
              cfg.streaming,
              cfg.leaseMs);
      registration.start();
    }
    return this;
  }

  /** The address served (and registered), host:port. */
  public String address() {
    return address;
  }

  /** The port bound. */
  public int port() {
    return server.getPort();
  }

  /**
   * Blocks until SIGTERM or SIGINT, then {@link #shutdown()}s. Returns normally, so a {@code
   * main} that ends here exits 0 (a JVM ended by the signal's default handling exits 143).
   */
  public void awaitSignal() throws InterruptedException {
    CountDownLatch signalled = new CountDownLatch(1);
    boolean handled = Signals.install(signalled::countDown);
    if (!handled) {
      // Without sun.misc.Signal: a shutdown hook still drains, but the exit status is the
      // signal's.
      Runtime.getRuntime().addShutdownHook(new Thread(this::shutdown));
    }
    signalled.await();
    shutdown();
  }

  /** Deregisters, keeps serving for the drain time, then stops the server. */
  public synchronized void shutdown() {
    if (server == null || server.isShutdown()) {
      return;
    }
    LOG.info("Shutting down: deregistering, then draining.");
    health.enterTerminalState();
    if (registration != null) {
      registration.deregister();
      try {
        // Replicas that have not yet heard of the deregistration still route here.
        Thread.sleep(cfg.drain.toMillis());
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
      }
    }
    server.shutdown();
    try {
      if (!server.awaitTermination(cfg.grace.toMillis(), TimeUnit.MILLISECONDS)) {
        server.shutdownNow();
      }
    } catch (InterruptedException e) {
      server.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }

  record HostPort(String host, int port) {
    static HostPort parse(String s) {
      int i = s.lastIndexOf(':');
      if (i < 0) {
        throw new IllegalArgumentException("listen address " + s + ": expected host:port");
      }
      String host = s.substring(0, i);
      if (host.startsWith("[") && host.endsWith("]")) {
        host = host.substring(1, host.length() - 1);
      }
      return new HostPort(host, Integer.parseInt(s.substring(i + 1)));
    }
  }

  /** Configuration; every setting has a default that works on one machine. */
  public static final class Builder {
    private final String service;
    private final Handler handler;
    private String listen = "127.0.0.1:0";
    private String advertise;
    private String gateway;
    private String token;
    private String instanceId;
    private final List<Registration.Route> routes = new ArrayList<>();
    private boolean streaming = true;
    private long leaseMs;
    private Duration drain = Duration.ofMillis(500);
    private Duration grace = Duration.ofSeconds(5);
    private int maxMessageBytes = 64 << 20;

    private Builder(String service, Handler handler) {
      this.service = service;
      this.handler = handler;
    }

    /** Address to bind, host:port (default 127.0.0.1:0: any free port). */
    public Builder listen(String hostPort) {
      this.listen = hostPort;
      return this;
    }

    /** Address to register when it differs from the one bound (0.0.0.0, containers). */
    public Builder advertise(String hostPort) {
      this.advertise = hostPort;
      return this;
    }

    /** The gateway's registration URL (http://host:port); none: do not register. */
    public Builder gateway(String url) {
      this.gateway = url;
      return this;
    }

    /** Bearer token for the registration API, when the gateway asks for one. */
    public Builder token(String token) {
      this.token = token;
      return this;
    }

    /** Instance id (default: the gateway derives one). */
    public Builder instanceId(String id) {
      this.instanceId = id;
      return this;
    }

    /** Adds a route prefix ("/hello"); without any, the gateway's default "/{service}". */
    public Builder route(String pathPrefix) {
      return route(pathPrefix, false);
    }

    /** Adds a route prefix whose responses stream (SSE, downloads): always sent on Stream. */
    public Builder route(String pathPrefix, boolean stream) {
      routes.add(new Registration.Route(pathPrefix, stream));
      return this;
    }

    /** Whether to declare {@code streaming} (default true: the adapter serves Stream). */
    public Builder streaming(boolean streaming) {
      this.streaming = streaming;
      return this;
    }

    /** Lease to ask for in ms (default: the gateway's). */
    public Builder leaseMs(long ms) {
      this.leaseMs = ms;
      return this;
    }

    /** How long to keep serving after deregistering (default 500 ms). */
    public Builder drain(Duration d) {
      this.drain = d;
      return this;
    }

    /** How long in-flight calls may take to finish after the drain (default 5 s). */
    public Builder grace(Duration d) {
      this.grace = d;
      return this;
    }

    /** The largest Send message accepted (default 64 MiB). */
    public Builder maxMessageBytes(int n) {
      this.maxMessageBytes = n;
      return this;
    }

    /** The server, not started. */
    public ForwardingServer build() {
      return new ForwardingServer(this);
    }
  }
}
