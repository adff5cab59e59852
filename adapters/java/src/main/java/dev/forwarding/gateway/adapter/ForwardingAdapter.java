package dev.forwarding.gateway.adapter;

import com.google.protobuf.ByteString;
import forwarding.v1.Forwarding.BodyChunk;
import forwarding.v1.Forwarding.ForwardingReq;
import forwarding.v1.Forwarding.ForwardingResp;
import forwarding.v1.Forwarding.Header;
import forwarding.v1.Forwarding.StreamEnd;
import forwarding.v1.Forwarding.StreamRequest;
import forwarding.v1.Forwarding.StreamResponse;
import forwarding.v1.ForwardingServiceGrpc;
import io.grpc.Status;
import io.grpc.stub.ServerCallStreamObserver;
import io.grpc.stub.StreamObserver;
import java.io.IOException;
import java.io.InputStream;
import java.io.InterruptedIOException;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * {@code forwarding.v1.ForwardingService} served by a {@link Handler}.
 *
 * <p>{@code Send}: the handler runs on gRPC's thread with the body as an in-memory stream and a
 * buffered response. {@code Stream}: the handler runs on its own thread as soon as the head
 * arrives, reads body frames as they come (gRPC flow control: one frame is asked for only when
 * the handler has taken the previous one), and each {@code flush()} of the response sends a
 * frame once the transport is ready for it.
 */
public final class ForwardingAdapter extends ForwardingServiceGrpc.ForwardingServiceImplBase {
  private static final Logger LOG = Logger.getLogger(ForwardingAdapter.class.getName());
  /** How long a finished handler waits for the half-close that follows the request's `end`. */
  private static final long HALF_CLOSE_WAIT_MS = 1000;

  private final Handler handler;
  private final ExecutorService streams;

  /** An adapter calling {@code handler} for every exchange. */
  public ForwardingAdapter(Handler handler) {
    this.handler = handler;
    AtomicInteger n = new AtomicInteger();
    this.streams =
        Executors.newCachedThreadPool(
            r -> {
              Thread t = new Thread(r, "forwarding-stream-" + n.incrementAndGet());
              t.setDaemon(true);
              return t;
            });
  }

  @Override
  public void send(ForwardingReq req, StreamObserver<ForwardingResp> observer) {
    ServerCallStreamObserver<ForwardingResp> o = (ServerCallStreamObserver<ForwardingResp>) observer;
    try {
      Conversions.check(req);
    } catch (Conversions.Malformed e) {
      o.onError(Status.INVALID_ARGUMENT.withDescription(e.getMessage()).asRuntimeException());
      return;
    }
    Call call = new Call(false, o);
    call.enter();
    try {
      List<Field> trailers = Conversions.fields(req.getTrailersList());
      HttpRequest hreq = new HttpRequest(req, req.getBody().newInput(), () -> trailers, call);
      HttpResponse resp =
          new HttpResponse(
              call,
              new HttpResponse.Sink() {
                @Override
                public void head(ForwardingResp head) {}

                @Override
                public void body(ByteString chunk) {}
              });
      handler.service(hreq, resp);
      ForwardingResp answer =
          resp.head().toBuilder()
              .setBody(resp.takeBuffered())
              .addAllTrailers(Conversions.headers(resp.trailers()))
              .build();
      if (!call.isCancelled()) {
        o.onNext(answer);
        o.onCompleted();
      }
    } catch (Throwable t) {
      fail(o, call, t);
    } finally {
      call.exit();
    }
  }

  private static void fail(StreamObserver<?> o, Call call, Throwable t) {
    if (call.isCancelled()) {
      return; // nobody reads the answer; gRPC already ended the call
    }
    if (t instanceof Error && !(t instanceof OutOfMemoryError) && !(t instanceof StackOverflowError)) {
      LOG.log(Level.SEVERE, "handler error", t);
    } else {
      LOG.log(Level.FINE, "handler failed", t);
    }
    try {
      o.onError(
          Status.INTERNAL
              .withDescription("handler failed: " + t)
              .withCause(t)
              .asRuntimeException());
    } catch (RuntimeException ignored) {
      // the call ended meanwhile
    }
  }

  @Override
  public StreamObserver<StreamRequest> stream(StreamObserver<StreamResponse> observer) {
    ServerCallStreamObserver<StreamResponse> o = (ServerCallStreamObserver<StreamResponse>) observer;
    o.disableAutoRequest();
    Exchange x = new Exchange(o);
    o.request(1);
    return x;
  }

  /** One {@code Stream} call: the request frames' order, the body queue, the response frames. */
  private final class Exchange implements StreamObserver<StreamRequest>, HttpResponse.Sink {
    private final ServerCallStreamObserver<StreamResponse> o;
    private final Call call;
    private final LinkedBlockingQueue<Object> body = new LinkedBlockingQueue<>();
    private final Object state = new Object();
    private boolean head;
    private boolean ended;
    private boolean halfClosed;
    private boolean closed; // the response side is finished (OK or not)
    private volatile List<Field> trailers;

    Exchange(ServerCallStreamObserver<StreamResponse> o) {
      this.o = o;
      this.call = new Call(true, o);
    }

    @Override
    public void onNext(StreamRequest frame) {
      synchronized (state) {
        if (closed) {
          return;
        }
        switch (frame.getFrameCase()) {
          case HEAD -> {
            if (head) {
              bad("a second `head` frame");
              return;
            }
            head = true;
            ForwardingReq req = frame.getHead();
            try {
              Conversions.check(req);
            } catch (Conversions.Malformed e) {
              bad(e.getMessage());
              return;
            }
            if (req.getTrailersCount() > 0) {
              bad("trailers in `head` (they belong in `end`)");
              return;
            }
            if (!req.getUpgrade().isEmpty()) {
              refuseUpgrade(req.getUpgrade());
              return;
            }
            if (!req.getBody().isEmpty()) {
              body.add(req.getBody());
            }
            streams.execute(() -> run(req));
            o.request(1);
          }
          case BODY -> {
            if (!head) {
              bad("the first frame must be `head`");
            } else if (ended) {
              bad("a `body` frame after `end`");
            } else if (frame.getBody().getData().isEmpty()) {
              o.request(1);
            } else {
              body.add(frame.getBody().getData()); // the next frame is asked for once it is read
            }
          }
          case END -> {
            if (!head) {
              bad("the first frame must be `head`");
            } else if (ended) {
              bad("a second `end` frame");
            } else {
              List<Header> t = frame.getEnd().getTrailersList();
              try {
                Conversions.checkFields(t, "trailer");
              } catch (Conversions.Malformed e) {
                bad(e.getMessage());
                return;
              }
              trailers = Conversions.fields(t);
              ended = true;
              body.add(END);
              o.request(1); // to see the half-close, or a frame that should not come
            }
          }
          default ->
              bad(
                  head
                      ? "a `" + frame.getFrameCase().name().toLowerCase()
                          + "` frame in an exchange that is not a WebSocket"
                      : "the first frame must be `head`");
        }
      }
    }

    @Override
    public void onError(Throwable t) {
      body.add(new IOException("the call was cancelled", t));
      synchronized (state) {
        state.notifyAll();
      }
    }

    @Override
    public void onCompleted() {
      synchronized (state) {
        halfClosed = true;
        state.notifyAll();
        if (!closed && head && !ended) {
          bad("the request stream was half-closed before its `end` frame");
        } else if (!head && !closed) {
          bad("the first frame must be `head`");
        }
      }
    }

    /** Fails the call with INVALID_ARGUMENT; the handler, if running, sees its body break. */
    private void bad(String message) {
      // called with `state` held
      body.add(new IOException("malformed request stream: " + message));
      if (!closed) {
        closed = true;
        synchronized (o) {
          o.onError(
              Status.INVALID_ARGUMENT
                  .withDescription("malformed Stream: " + message)
                  .asRuntimeException());
        }
      }
      call.cancel();
      state.notifyAll();
    }

    private void refuseUpgrade(String upgrade) {
      closed = true;
      byte[] msg =
          ("{\"error\":\"upgrade to " + upgrade + " is not supported by this backend\"}")
              .getBytes(StandardCharsets.UTF_8);
      synchronized (o) {
        o.onNext(
            StreamResponse.newBuilder()
                .setHead(
                    ForwardingResp.newBuilder()
                        .setStatus(501)
                        .addHeaders(
                            Header.newBuilder()
                                .setName("content-type")
                                .setValue(ByteString.copyFromUtf8("application/json"))))
                .build());
        o.onNext(
            StreamResponse.newBuilder()
                .setBody(BodyChunk.newBuilder().setData(ByteString.copyFrom(msg)))
                .build());
        o.onNext(StreamResponse.newBuilder().setEnd(StreamEnd.getDefaultInstance()).build());
        o.onCompleted();
      }
    }

    private void run(ForwardingReq req) {
      call.enter();
      try {
        HttpRequest hreq = new HttpRequest(req, new BodyStream(), () -> trailers, call);
        HttpResponse resp = new HttpResponse(call, this);
        handler.service(hreq, resp);
        resp.commit();
        ByteString rest = resp.takeBuffered();
        if (!rest.isEmpty()) {
          body(rest);
        }
        finish(resp.trailers());
      } catch (Throwable t) {
        synchronized (state) {
          if (closed) {
            return;
          }
          closed = true;
        }
        fail(o, call, t);
      } finally {
        call.exit();
      }
    }

    /** The end frame and OK, once the request side is known to be whole (or was not read). */
    private void finish(List<Field> respTrailers) throws IOException {
      long until = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(HALF_CLOSE_WAIT_MS);
      synchronized (state) {
        // A request read to its `end` is followed at once by the half-close; waiting for it
        // lets a malformed frame after `end` fail the call rather than race its success.
        while (ended && !halfClosed && !closed && System.nanoTime() < until) {
          try {
            state.wait(Math.max(1, TimeUnit.NANOSECONDS.toMillis(until - System.nanoTime())));
          } catch (InterruptedException e) {
            break;
          }
        }
        if (closed) {
          return;
        }
        closed = true;
      }
      call.checkOpen();
      synchronized (o) {
        o.onNext(
            StreamResponse.newBuilder()
                .setEnd(StreamEnd.newBuilder().addAllTrailers(Conversions.headers(respTrailers)))
                .build());
        o.onCompleted();
      }
    }

    @Override
    public void head(ForwardingResp h) throws IOException {
      send(StreamResponse.newBuilder().setHead(h).build());
    }

    @Override
    public void body(ByteString chunk) throws IOException {
      send(StreamResponse.newBuilder().setBody(BodyChunk.newBuilder().setData(chunk)).build());
    }

    private void send(StreamResponse frame) throws IOException {
      call.awaitReady();
      synchronized (state) {
        if (closed) {
          throw new IOException("the call is over");
        }
      }
      synchronized (o) {
        o.onNext(frame);
      }
    }

    /** The request body as the handler reads it: chunks as they arrive, then the end. */
    private final class BodyStream extends InputStream {
      private InputStream current = InputStream.nullInputStream();
      private boolean done;

      private boolean next() throws IOException {
        if (done) {
          return false;
        }
        Object item;
        try {
          item = body.take();
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
          throw new InterruptedIOException("interrupted while reading the request body");
        }
        if (item == END) {
          done = true;
          return false;
        }
        if (item instanceof IOException e) {
          body.add(e); // every later read fails the same way
          throw new IOException(e.getMessage(), e);
        }
        current = ((ByteString) item).newInput();
        if (!ended()) {
          o.request(1);
        }
        return true;
      }

      private boolean ended() {
        synchronized (state) {
          return ended;
        }
      }

      @Override
      public int read() throws IOException {
        byte[] one = new byte[1];
        int n = read(one, 0, 1);
        return n < 0 ? -1 : one[0] & 0xff;
      }

      @Override
      public int read(byte[] b, int off, int len) throws IOException {
        if (len == 0) {
          return 0;
        }
        while (true) {
          int n = current.read(b, off, len);
          if (n > 0) {
            return n;
          }
          if (!next()) {
            return -1;
          }
        }
      }
    }
  }

  private static final Object END = new Object();
}
