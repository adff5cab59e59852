package dev.forwarding.gateway.bench;

import com.google.protobuf.ByteString;
import forwarding.v1.Forwarding.ForwardingReq;
import forwarding.v1.Forwarding.Header;
import forwarding.v1.ForwardingServiceGrpc;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;

/** Sends N small Send requests to ADDRESS, one at a time: {@code Load ADDRESS N}. */
public final class Load {
  public static void main(String[] args) throws Exception {
    ManagedChannel ch = ManagedChannelBuilder.forTarget(args[0]).usePlaintext().build();
    var stub = ForwardingServiceGrpc.newBlockingStub(ch);
    ForwardingReq req =
        ForwardingReq.newBuilder()
            .setProtocolVersion(1)
            .setMethod("GET")
            .setPath("/hello/world")
            .addHeaders(Header.newBuilder().setName("accept").setValue(ByteString.copyFromUtf8("*/*")))
            .addHeaders(
                Header.newBuilder().setName("user-agent").setValue(ByteString.copyFromUtf8("bench/1")))
            .build();
    int n = Integer.parseInt(args[1]);
    for (int i = 0; i < n; i++) {
      if (stub.send(req).getStatus() != 200) {
        throw new AssertionError("not 200");
      }
    }
    ch.shutdownNow();
  }
}
