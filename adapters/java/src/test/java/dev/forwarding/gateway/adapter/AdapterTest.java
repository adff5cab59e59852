package dev.forwarding.gateway.adapter;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.ByteString;
import forwarding.v1.Forwarding.BodyChunk;
import forwarding.v1.Forwarding.ForwardingReq;
import forwarding.v1.Forwarding.ForwardingResp;
import forwarding.v1.Forwarding.Header;
import forwarding.v1.Forwarding.RequestContext;
import forwarding.v1.Forwarding.StreamEnd;
import forwarding.v1.Forwarding.StreamRequest;
import forwarding.v1.Forwarding.StreamResponse;
import forwarding.v1.ForwardingServiceGrpc;
import io.grpc.ManagedChannel;
import io.grpc.Server;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.inprocess.InProcessChannelBuilder;
import io.grpc.inprocess.InProcessServerBuilder;
import io.grpc.stub.StreamObserver;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

/** The conversion both ways and the frame rules, through an in-process gRPC channel. */
class AdapterTest {
  private Server server;
  private ManagedChannel channel;

  private ForwardingServiceGrpc.ForwardingServiceBlockingStub start(Handler h) throws Exception {
    String name = InProcessServerBuilder.generateName();
    server =
        InProcessServerBuilder.forName(name).addService(new ForwardingAdapter(h)).build().start();
    channel = InProcessChannelBuilder.forName(name).build();
    return ForwardingServiceGrpc.newBlockingStub(channel);
  }

  @AfterEach
  void stop() {
    if (channel != null) {
      channel.shutdownNow();
      server.shutdownNow();
    }
  }

  private static Header h(String name, byte[] value) {
    return Header.newBuilder().setName(name).setValue(ByteString.copyFrom(value)).build();
  }

  private static Header h(String name, String value) {
    return h(name, value.getBytes(StandardCharsets.ISO_8859_1));
  }

  private static ForwardingReq.Builder req() {
    return ForwardingReq.newBuilder()
        .setProtocolVersion(1)
        .setMethod("POST")
        .setPath("/a%2Fb//c")
        .setQuery("x=1&x=2")
        .setHasQuery(true)
        .setContext(RequestContext.newBuilder().setDeadlineMs(1500).setRequestId("r-1"));
  }

  @Test
  void sendCarriesRequestAndAnswerExactly() throws Exception {
    AtomicReference<HttpRequest> seen = new AtomicReference<>();
    AtomicReference<byte[]> body = new AtomicReference<>();
    var stub =
        start(
            (rq, rs) -> {
              seen.set(rq);
              body.set(rq.readAllBytes());
              rs.setStatus(404);
              rs.addHeader("Set-Cookie", "a=1");
              rs.addHeader("set-cookie", "b=2");
              rs.addHeader("x-bin", "\u00ff\u0080");
              rs.addTrailer("x-sum", "abc");
              rs.getOutputStream().write(new byte[] {0, 1, 2, (byte) 0xff});
            });
    ForwardingResp resp =
        stub.send(
            req()
                .addHeaders(h("x-a", "1"))
                .addHeaders(h("x-a", "2"))
                .addHeaders(h("x-obs", new byte[] {(byte) 0xff, (byte) 0x80}))
                .setBody(ByteString.copyFromUtf8("hello"))
                .addTrailers(h("x-checksum", "ab"))
                .build());
    HttpRequest r = seen.get();
    assertEquals("POST", r.getMethod());
    assertEquals("/a%2Fb//c", r.getRequestURI());
    assertEquals("x=1&x=2", r.getQueryString());
    assertEquals(List.of("1", "2"), r.getHeaders("X-A"));
    assertEquals(List.of("x-a", "x-obs"), r.getHeaderNames());
    assertEquals(2, r.getFields().get(2).valueBytes().length);
    assertEquals((byte) 0xff, r.getFields().get(2).valueBytes()[0]);
    assertEquals("hello", new String(body.get(), StandardCharsets.UTF_8));
    assertEquals(List.of(new Field("x-checksum", "ab")), r.getTrailerFields());
    assertEquals(1500, r.getDeadlineMs());
    assertEquals("r-1", r.getRequestId());

    assertEquals(404, resp.getStatus());
    assertEquals(3, resp.getHeadersCount());
    assertEquals("set-cookie", resp.getHeaders(0).getName());
    assertEquals("a=1", resp.getHeaders(0).getValue().toStringUtf8());
    assertEquals("b=2", resp.getHeaders(1).getValue().toStringUtf8());
    assertEquals(ByteString.copyFrom(new byte[] {(byte) 0xff, (byte) 0x80}), resp.getHeaders(2).getValue());
    assertEquals(ByteString.copyFrom(new byte[] {0, 1, 2, (byte) 0xff}), resp.getBody());
    assertEquals("x-sum", resp.getTrailers(0).getName());
  }

  @Test
  void queryAbsentAndEmptyDiffer() throws Exception {
    List<String> queries = new ArrayList<>();
    var stub = start((rq, rs) -> queries.add(rq.getQueryString()));
    stub.send(req().setQuery("").setHasQuery(false).build());
    stub.send(req().setQuery("").setHasQuery(true).build());
    assertEquals(java.util.Arrays.asList(null, ""), queries);
  }

  @Test
  void malformedSendIsInvalidArgument() throws Exception {
    var stub = start((rq, rs) -> rs.write("never"));
    for (ForwardingReq bad :
        List.of(
            req().addHeaders(h("bad name", "x")).build(),
            req().addHeaders(h("X-Upper", "x")).build(),
            req().addHeaders(h("x-crlf", "a\r\nb")).build(),
            req().setMethod("GE T").build(),
            req().setContext(RequestContext.newBuilder().setDeadlineMs(-1)).build())) {
      StatusRuntimeException e = assertThrows(StatusRuntimeException.class, () -> stub.send(bad));
      assertEquals(Status.Code.INVALID_ARGUMENT, e.getStatus().getCode(), bad.toString());
      assertTrue(!e.getStatus().getDescription().isEmpty());
    }
  }

  @Test
  void deadlineInterruptsABlockedSendHandler() throws Exception {
    CompletableFuture<Throwable> seen = new CompletableFuture<>();
    var stub =
        start(
            (rq, rs) -> {
              try {
                Thread.sleep(10_000);
                seen.complete(null);
              } catch (InterruptedException e) {
                seen.complete(e);
                throw e;
              }
            });
    StatusRuntimeException e =
        assertThrows(
            StatusRuntimeException.class,
            () -> stub.withDeadlineAfter(200, TimeUnit.MILLISECONDS).send(req().build()));
    assertEquals(Status.Code.DEADLINE_EXCEEDED, e.getStatus().getCode());
    // The handler blocks gRPC's thread for this call, so only the call's Context can tell it.
    assertTrue(seen.get(5, TimeUnit.SECONDS) instanceof InterruptedException);
  }

  @Test
  void handlerFailureIsInternal() throws Exception {
    var stub =
        start(
            (rq, rs) -> {
              throw new IllegalStateException("boom");
            });
    StatusRuntimeException e = assertThrows(StatusRuntimeException.class, () -> stub.send(req().build()));
    assertEquals(Status.Code.INTERNAL, e.getStatus().getCode());
    assertTrue(e.getStatus().getDescription().contains("boom"));
  }

  /** Runs one Stream call with the given frames; returns the answer frames and the status. */
  private record Outcome(List<StreamResponse> frames, Status status) {}

  private Outcome stream(List<StreamRequest> frames) throws Exception {
    var async = ForwardingServiceGrpc.newStub(channel);
    List<StreamResponse> got = new ArrayList<>();
    CompletableFuture<Status> done = new CompletableFuture<>();
    StreamObserver<StreamRequest> up =
        async.stream(
            new StreamObserver<>() {
              @Override
              public void onNext(StreamResponse v) {
                synchronized (got) {
                  got.add(v);
                }
              }

              @Override
              public void onError(Throwable t) {
                done.complete(Status.fromThrowable(t));
              }

              @Override
              public void onCompleted() {
                done.complete(Status.OK);
              }
            });
    for (StreamRequest f : frames) {
      up.onNext(f);
    }
    up.onCompleted();
    Status s = done.get(10, TimeUnit.SECONDS);
    return new Outcome(got, s);
  }

  private static StreamRequest head(ForwardingReq r) {
    return StreamRequest.newBuilder().setHead(r).build();
  }

  private static StreamRequest body(String s) {
    return StreamRequest.newBuilder()
        .setBody(BodyChunk.newBuilder().setData(ByteString.copyFromUtf8(s)))
        .build();
  }

  private static StreamRequest end(Header... trailers) {
    return StreamRequest.newBuilder()
        .setEnd(StreamEnd.newBuilder().addAllTrailers(List.of(trailers)))
        .build();
  }

  @Test
  void streamReadsChunksAndFlushSendsFrames() throws Exception {
    start(
        (rq, rs) -> {
          String in = new String(rq.readAllBytes(), StandardCharsets.UTF_8);
          rs.setContentType("text/event-stream");
          rs.addTrailer("x-t", rq.getTrailerFields().get(0).value());
          OutputStream out = rs.getOutputStream();
          out.write(("data: " + in + "\n\n").getBytes(StandardCharsets.UTF_8));
          out.flush();
          out.write("data: two\n\n".getBytes(StandardCharsets.UTF_8));
          out.flush();
        });
    Outcome o =
        stream(
            List.of(
                head(req().clearBody().build()),
                body("ab"),
                body("cd"),
                end(h("x-t", "v"))));
    assertEquals(Status.Code.OK, o.status().getCode(), o.status().toString());
    assertEquals(4, o.frames().size(), o.frames().toString());
    assertEquals(200, o.frames().get(0).getHead().getStatus());
    assertEquals("data: abcd\n\n", o.frames().get(1).getBody().getData().toStringUtf8());
    assertEquals("data: two\n\n", o.frames().get(2).getBody().getData().toStringUtf8());
    assertEquals("x-t", o.frames().get(3).getEnd().getTrailers(0).getName());
  }

  @Test
  void streamFramesOutOfOrderAreInvalidArgument() throws Exception {
    start((rq, rs) -> rs.write(new String(rq.readAllBytes(), StandardCharsets.UTF_8)));
    ForwardingReq r = req().build();
    List<List<StreamRequest>> cases =
        List.of(
            List.of(body("x"), head(r), end()),
            List.of(head(r), head(r), end()),
            List.of(head(r), end(), body("x")),
            List.of(head(r), end(), end()),
            List.of(head(r), body("x")),
            List.of(head(req().addTrailers(h("x-t", "v")).build()), end()),
            List.of(head(req().addHeaders(h("bad name", "v")).build()), end()));
    for (List<StreamRequest> frames : cases) {
      Outcome o = stream(frames);
      assertEquals(Status.Code.INVALID_ARGUMENT, o.status().getCode(), frames.toString());
    }
  }

  @Test
  void streamWebSocketUpgradeIsRefusedWith501() throws Exception {
    start((rq, rs) -> rs.write("never"));
    Outcome o = stream(List.of(head(req().setMethod("GET").setUpgrade("websocket").build())));
    assertEquals(Status.Code.OK, o.status().getCode());
    assertEquals(501, o.frames().get(0).getHead().getStatus());
  }

  @Test
  void registrationJsonIsParsed() {
    String body = "{\"instance_id\":\"svc-1\",\"lease_ms\":30000,\"created\":true}";
    assertEquals("svc-1", Registration.Json.field(body, "instance_id"));
    assertEquals("30000", Registration.Json.field(body, "lease_ms"));
    assertEquals("\"a\\\"b\"", Registration.Json.str("a\"b"));
  }
}
