package dev.forwarding.gateway.bench;

import com.google.protobuf.ByteString;
import dev.forwarding.gateway.adapter.ForwardingServer;
import forwarding.v1.Forwarding.ForwardingReq;
import forwarding.v1.Forwarding.ForwardingResp;
import forwarding.v1.Forwarding.Header;
import forwarding.v1.ForwardingServiceGrpc;
import io.grpc.Server;
import io.grpc.netty.shaded.io.grpc.netty.NettyServerBuilder;
import io.grpc.stub.StreamObserver;
import java.net.InetSocketAddress;

/**
 * The same small answer two ways, for the overhead figure: {@code adapter} through the adapter's
 * handler, {@code raw} on the generated service base directly. Prints {@code READY host:port}.
 */
public final class Hello {
  public static void main(String[] args) throws Exception {
    if (args.length == 1 && args[0].equals("raw")) {
      Server s =
          NettyServerBuilder.forAddress(new InetSocketAddress("127.0.0.1", 0))
              .addService(
                  new ForwardingServiceGrpc.ForwardingServiceImplBase() {
                    @Override
                    public void send(ForwardingReq req, StreamObserver<ForwardingResp> o) {
                      o.onNext(
                          ForwardingResp.newBuilder()
                              .setStatus(200)
                              .addHeaders(
                                  Header.newBuilder()
                                      .setName("content-type")
                                      .setValue(ByteString.copyFromUtf8("text/plain")))
                              .setBody(ByteString.copyFromUtf8("hello " + req.getPath()))
                              .build());
                      o.onCompleted();
                    }
                  })
              .build()
              .start();
      System.out.println("READY 127.0.0.1:" + s.getPort());
      System.out.flush();
      s.awaitTermination();
    } else {
      ForwardingServer s =
          ForwardingServer.builder(
                  "hello",
                  (rq, rs) -> {
                    rs.setContentType("text/plain");
                    rs.write("hello " + rq.getRequestURI());
                  })
              .build()
              .start();
      System.out.println("READY " + s.address());
      System.out.flush();
      s.awaitSignal();
      System.exit(0);
    }
  }
}
