package dev.forwarding.gateway.adapter;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.sun.net.httpserver.HttpServer;
import forwarding.v1.Forwarding.ForwardingReq;
import forwarding.v1.Forwarding.ForwardingResp;
import forwarding.v1.ForwardingServiceGrpc;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.health.v1.HealthCheckRequest;
import io.grpc.health.v1.HealthCheckResponse.ServingStatus;
import io.grpc.health.v1.HealthGrpc;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.function.BooleanSupplier;
import org.junit.jupiter.api.Test;

/**
 * End to end over sockets: a real gRPC server, and a stand-in for the gateway's registration API
 * that records what the backend asks: register, renew (lease 300 ms), deregister on shutdown.
 */
class LifecycleTest {
  private static void waitFor(String what, BooleanSupplier f) throws InterruptedException {
    long until = System.nanoTime() + 10_000_000_000L;
    while (!f.getAsBoolean()) {
      if (System.nanoTime() > until) {
        throw new AssertionError("within 10 s: expected " + what);
      }
      Thread.sleep(20);
    }
  }

  @Test
  void registersRenewsServesAndDeregisters() throws Exception {
    List<String> seen = new CopyOnWriteArrayList<>();
    HttpServer registry = HttpServer.create(new InetSocketAddress("127.0.0.1", 0), 0);
    registry.createContext(
        "/",
        x -> {
          String body = new String(x.getRequestBody().readAllBytes(), StandardCharsets.UTF_8);
          seen.add(x.getRequestMethod() + " " + x.getRequestURI().getRawPath() + " " + body);
          byte[] answer =
              (x.getRequestMethod().equals("PUT")
                      ? "{\"instance_id\":\"hello-1\",\"lease_ms\":300,\"created\":true}"
                      : "{\"lease_ms\":300}")
                  .getBytes(StandardCharsets.UTF_8);
          x.sendResponseHeaders(200, answer.length);
          x.getResponseBody().write(answer);
          x.close();
        });
    registry.start();
    ForwardingServer server =
        ForwardingServer.builder("hello", (rq, rs) -> rs.write("hello " + rq.getRequestURI()))
            .gateway("http://127.0.0.1:" + registry.getAddress().getPort())
            .route("/hello")
            .route("/hello/events", true)
            .drain(java.time.Duration.ofMillis(50))
            .build()
            .start();
    ManagedChannel ch = ManagedChannelBuilder.forTarget(server.address()).usePlaintext().build();
    try {
      waitFor("a registration and a renewal", () -> seen.stream().anyMatch(s -> s.contains("/renew")));
      String put = seen.get(0);
      assertTrue(put.startsWith("PUT /v1/registrations {"), put);
      assertTrue(put.contains("\"address\":\"" + server.address() + "\""), put);
      assertTrue(put.contains("{\"path_prefix\":\"/hello/events\",\"stream\":true}"), put);
      assertTrue(put.contains("\"streaming\":true"), put);
      assertTrue(seen.stream().anyMatch(s -> s.startsWith("POST /v1/registrations/hello/hello-1/renew")));

      ForwardingResp resp =
          ForwardingServiceGrpc.newBlockingStub(ch)
              .send(ForwardingReq.newBuilder().setMethod("GET").setPath("/hello/x").build());
      assertEquals(200, resp.getStatus());
      assertEquals("hello /hello/x", resp.getBody().toStringUtf8());
      assertEquals(
          ServingStatus.SERVING,
          HealthGrpc.newBlockingStub(ch).check(HealthCheckRequest.getDefaultInstance()).getStatus());
    } finally {
      server.shutdown();
      ch.shutdownNow();
      registry.stop(0);
    }
    assertTrue(
        seen.stream().anyMatch(s -> s.startsWith("DELETE /v1/registrations/hello/hello-1")),
        seen.toString());
  }
}
