package dev.forwarding.gateway.adapter;

/**
 * The one thing a service implements: answer one HTTP request.
 *
 * <p>Shaped like {@code HttpServlet.service}: read {@link HttpRequest} (headers, then the body
 * from {@link HttpRequest#getInputStream()}), set the status and headers on {@link HttpResponse}
 * and write the body to {@link HttpResponse#getOutputStream()}. On {@code Stream} calls every
 * {@code flush()} sends what was written so far as one body frame (server-sent events,
 * downloads); on {@code Send} the whole answer travels in one message.
 *
 * <p>Returning normally completes the exchange. Throwing fails the gRPC call ({@code INTERNAL}):
 * the gateway answers 502, or aborts the client's response when its head was already sent, so a
 * client never takes a truncated body for a whole one. To answer an HTTP error, set the status.
 *
 * <p>Cancellation (the client went away, the deadline passed) interrupts the handler's thread,
 * and later writes throw {@link java.io.IOException}, as a servlet container does on a broken
 * connection.
 */
@FunctionalInterface
public interface Handler {
  /** Answers {@code request} through {@code response}. Runs on its own thread; may block. */
  void service(HttpRequest request, HttpResponse response) throws Exception;
}
