package dev.forwarding.gateway.adapter;

import io.grpc.Context;
import io.grpc.stub.ServerCallStreamObserver;

/**
 * One exchange's shared state between the gRPC callbacks and the handler's thread: whether the
 * call was cancelled, which thread to interrupt, and (on {@code Stream}) when the transport can
 * take another frame.
 */
final class Call {
  private final boolean streaming;
  private final ServerCallStreamObserver<?> observer;
  private final Object lock = new Object();
  private boolean cancelled;
  private Thread handlerThread;

  Call(boolean streaming, ServerCallStreamObserver<?> observer) {
    this.streaming = streaming;
    this.observer = observer;
    observer.setOnCancelHandler(this::cancel);
    // gRPC runs a call's callbacks one at a time, so the cancel handler above cannot run while a
    // Send handler blocks gRPC's thread; the call's Context is cancelled from the transport (and
    // at the deadline) right away.
    Context.current().addListener(ctx -> cancel(), Runnable::run);
    if (streaming) {
      observer.setOnReadyHandler(this::wake);
    }
  }

  boolean streaming() {
    return streaming;
  }

  boolean isCancelled() {
    synchronized (lock) {
      return cancelled;
    }
  }

  /** Marks the current thread as the handler's, so a cancellation interrupts it. */
  void enter() {
    synchronized (lock) {
      handlerThread = Thread.currentThread();
      if (cancelled) {
        handlerThread.interrupt();
      }
    }
  }

  /** The handler returned: a later cancellation must not interrupt whatever the thread does next. */
  void exit() {
    synchronized (lock) {
      handlerThread = null;
    }
    Thread.interrupted();
  }

  void cancel() {
    synchronized (lock) {
      cancelled = true;
      if (handlerThread != null) {
        handlerThread.interrupt();
      }
      lock.notifyAll();
    }
  }

  private void wake() {
    synchronized (lock) {
      lock.notifyAll();
    }
  }

  /**
   * Waits until gRPC can take another frame without buffering it: this is the backpressure a
   * slow client exerts on a handler that writes faster than it reads.
   */
  void awaitReady() throws java.io.IOException {
    synchronized (lock) {
      while (!cancelled && !observer.isReady()) {
        try {
          lock.wait(100);
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
          throw new java.io.InterruptedIOException("interrupted while waiting for the client");
        }
      }
      if (cancelled) {
        throw new java.io.IOException("the call was cancelled (client gone or deadline passed)");
      }
    }
  }

  void checkOpen() throws java.io.IOException {
    if (isCancelled()) {
      throw new java.io.IOException("the call was cancelled (client gone or deadline passed)");
    }
  }
}
